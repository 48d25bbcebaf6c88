// SPDX-License-Identifier: GPL-2.0
/*
 * kconfig-query: answers questions about Kconfig symbols with the kernel's own kconfig
 * library (the scripts/kconfig/*.o that `make olddefconfig` just built for the tree being
 * configured), so dependency answers follow exactly the rules that produced the .config.
 *
 * Synapse (synapse_os/kernel/kbuild.py) compiles this file in a scratch build directory
 * and runs it there with the environment make gave scripts/kconfig/conf.
 *
 * usage: kconfig-query KCONFIG CONFIG [--help-text] SYMBOL...
 *        kconfig-query KCONFIG -
 *   KCONFIG  top-level Kconfig file, exactly as conf was given it (usually "Kconfig")
 *   CONFIG   the .config to evaluate against
 *   -        session: Kconfig is parsed once, then commands come on stdin, one a line:
 *              read PATH                        evaluate against PATH from now on
 *                                               (conf_read, as menuconfig's Load does)
 *              query [--help-text] SYMBOL...    the records below
 *            each answered by its output and a line "ok" (or "error MESSAGE").
 * output (stdout), per symbol, tab-separated lines:
 *   symbol NAME | unknown NAME, then for a known symbol:
 *   type T, value V, visible y|m|n, dep_value, dep_expr, dep_missing EXPR...,
 *   rev_value, rev_term EXPR..., prompt TEXT COND COND_VALUE...,
 *   default VALUE_EXPR COND COND_VALUE..., range LOW HIGH...,
 *   choice PROMPT, choice_member NAME VALUE..., and for a choice member also
 *   choice_dep_value / choice_dep_expr / choice_dep_missing EXPR... (the condition of the
 *   choice itself) and member_dep_value / member_dep_expr / member_dep_missing EXPR...
 *   (the member's own menu dependency, which includes the choice's condition on kconfig
 *   6.11+ and only the placeholder "<choice>" before: see kernel-config/versions.toml),
 *   help_begin / lines / help_end (with --help-text), and finally "end".
 * Only stable parts of the kconfig API are used (struct symbol, property, menu, expr_print).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lkc.h"

static void plain_cb(void *data, struct symbol *sym, const char *str)
{
	(void)sym;
	str_append((struct gstr *)data, str);
}

static void valued_cb(void *data, struct symbol *sym, const char *str)
{
	struct gstr *gs = data;

	str_append(gs, str);
	if (sym && sym->type != S_UNKNOWN)
		str_printf(gs, " [=%s]", sym_get_string_value(sym));
}

static void print_expr(struct expr *e, int valued)
{
	struct gstr gs = str_new();

	if (e)
		expr_print(e, valued ? valued_cb : plain_cb, &gs, E_NONE);
	else
		str_append(&gs, "y");
	fputs(str_get(&gs), stdout);
	str_free(&gs);
}

static const char *tri_name(tristate t)
{
	return t == yes ? "y" : t == mod ? "m" : "n";
}

/* The parts of an && chain that keep the whole below `threshold`: the culprits. */
static void print_limiting(const char *key, struct expr *e, tristate threshold)
{
	if (!e || expr_calc_value(e) >= threshold)
		return;
	if (e->type == E_AND) {
		print_limiting(key, e->left.expr, threshold);
		print_limiting(key, e->right.expr, threshold);
		return;
	}
	printf("%s\t", key);
	print_expr(e, 1);
	putchar('\n');
}

/* KEY_value, KEY_expr and KEY_missing lines for one dependency expression. */
static void print_dependency(const char *key, struct expr *e)
{
	tristate value = e ? expr_calc_value(e) : yes;
	char missing[64];

	printf("%s_value\t%s\n%s_expr\t", key, tri_name(value), key);
	print_expr(e, 1);
	putchar('\n');
	snprintf(missing, sizeof(missing), "%s_missing", key);
	print_limiting(missing, e, value == no ? mod : yes);
}

/* The || terms of a reverse dependency that are active: who selects the symbol. */
static void print_active_terms(struct expr *e)
{
	if (!e)
		return;
	if (e->type == E_OR) {
		print_active_terms(e->left.expr);
		print_active_terms(e->right.expr);
		return;
	}
	if (expr_calc_value(e) != no) {
		fputs("rev_term\t", stdout);
		print_expr(e, 1);
		putchar('\n');
	}
}

/* A range bound: a literal, or a symbol with its value. */
static void print_bound(struct symbol *sym)
{
	if (sym->flags & SYMBOL_CONST) {
		fputs(sym->name, stdout);
		return;
	}
	sym_calc_value(sym);
	printf("%s [=%s]", sym->name, sym_get_string_value(sym));
}

static struct menu *choice_menu_of(struct symbol *sym)
{
	struct property *prop;

	for (prop = sym->prop; prop; prop = prop->next) {
		struct menu *m = prop->menu;

		if (m && m->parent && m->parent->sym && sym_is_choice(m->parent->sym))
			return m->parent;
	}
	return NULL;
}

static struct menu *first_menu_of(struct symbol *sym)
{
	struct property *prop;

	for (prop = sym->prop; prop; prop = prop->next)
		if (prop->menu)
			return prop->menu;
	return NULL;
}

static void print_help(struct symbol *sym)
{
	struct menu *m = first_menu_of(sym);
	struct gstr gs = str_new();
	const char *p, *nl;

	if (m)
		menu_get_ext_help(m, &gs);
	puts("help_begin");
	for (p = str_get(&gs); *p; p = nl + 1) {
		nl = strchr(p, '\n');
		if (!nl) {
			printf("|%s\n", p);
			break;
		}
		printf("|%.*s\n", (int)(nl - p), p);
	}
	puts("help_end");
	str_free(&gs);
}

static void query(const char *name, int help_text)
{
	struct symbol *sym = sym_find(name);
	struct property *prop;
	struct menu *choice;
	tristate dep, rev;

	if (!sym || sym->type == S_UNKNOWN) {
		printf("unknown\t%s\nend\n", name);
		return;
	}
	sym_calc_value(sym);
	dep = expr_calc_value(sym->dir_dep.expr);
	rev = sym->rev_dep.expr ? expr_calc_value(sym->rev_dep.expr) : no;

	printf("symbol\t%s\n", name);
	printf("type\t%s\n", sym_type_name(sym->type));
	printf("value\t%s\n", sym_get_string_value(sym));
	printf("visible\t%s\n", tri_name(sym->visible));
	printf("dep_value\t%s\n", tri_name(dep));
	fputs("dep_expr\t", stdout);
	print_expr(sym->dir_dep.expr, 1);
	putchar('\n');
	print_limiting("dep_missing", sym->dir_dep.expr, dep == no ? mod : yes);
	printf("rev_value\t%s\n", tri_name(rev));
	print_active_terms(sym->rev_dep.expr);

	for_all_prompts(sym, prop) {
		printf("prompt\t%s\t", prop->text);
		print_expr(prop->visible.expr, 0);
		printf("\t%s\n", tri_name(expr_calc_value(prop->visible.expr)));
	}
	for_all_defaults(sym, prop) {
		fputs("default\t", stdout);
		print_expr(prop->expr, 0);
		putchar('\t');
		print_expr(prop->visible.expr, 0);
		printf("\t%s\n", tri_name(expr_calc_value(prop->visible.expr)));
	}
	for_all_properties(sym, prop, P_RANGE) {
		if (prop->expr && prop->expr->type == E_RANGE) {
			fputs("range\t", stdout);
			print_bound(prop->expr->left.sym);
			putchar('\t');
			print_bound(prop->expr->right.sym);
			putchar('\n');
		}
	}
	choice = choice_menu_of(sym);
	if (choice) {
		struct menu *child, *member;

		printf("choice\t%s\n", choice->prompt ? choice->prompt->text : "");
		print_dependency("choice_dep", choice->dep);
		for (member = choice->list; member; member = member->next)
			if (member->sym == sym) {
				print_dependency("member_dep", member->dep);
				break;
			}
		for (child = choice->list; child; child = child->next)
			if (child->sym && child->sym->name) {
				sym_calc_value(child->sym);
				printf("choice_member\t%s\t%s\n", child->sym->name,
				       sym_get_string_value(child->sym));
			}
	}
	if (help_text)
		print_help(sym);
	puts("end");
}

static int session(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, stdin)) > 0) {
		char *save = NULL, *word;
		int help_text = 0;

		if (line[len - 1] == '\n')
			line[len - 1] = '\0';
		word = strtok_r(line, " ", &save);
		if (!word) {
			puts("ok");
		} else if (!strcmp(word, "read")) {
			char *path = strtok_r(NULL, "", &save);

			if (!path || conf_read(path))
				printf("error cannot read %s\n", path ? path : "(no path)");
			else
				puts("ok");
		} else if (!strcmp(word, "query")) {
			while ((word = strtok_r(NULL, " ", &save))) {
				if (!strcmp(word, "--help-text"))
					help_text = 1;
				else
					query(word, help_text);
			}
			puts("ok");
		} else {
			printf("error unknown command %s\n", word);
		}
		fflush(stdout);
	}
	free(line);
	return 0;
}

int main(int argc, char **argv)
{
	int i, help_text = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: %s KCONFIG CONFIG [--help-text] SYMBOL...\n", argv[0]);
		return 2;
	}
	conf_parse(argv[1]);
	if (!strcmp(argv[2], "-"))
		return session();
	if (conf_read(argv[2])) {
		fprintf(stderr, "kconfig-query: cannot read %s\n", argv[2]);
		return 1;
	}
	for (i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--help-text")) {
			help_text = 1;
			continue;
		}
		query(argv[i], help_text);
	}
	return 0;
}
