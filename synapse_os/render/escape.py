"""Escaping at the edge: one filter per output language, each escapes or refuses.

The profile model already types every value narrowly; these filters are the second wall
and the only way a template may print a value (a test checks that every `{{ … }}` in a
template goes through one of them). A value a filter cannot express safely raises
`UnsafeValue`, which render turns into an error naming the value: nothing is written.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from synapse_os.errors import UserError


class UnsafeValue(UserError):
    """A value that cannot be written safely in the target language."""


# Control characters (including TAB and newlines) and Unicode line separators.
CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _one_line(value: object, language: str) -> str:
    text = str(value)
    if CONTROL.search(text):
        raise UnsafeValue(f"{text!r} cannot be written into {language}: it holds a newline or "
                          "another control character")
    return text


def _only(value: object, allowed: re.Pattern[str], where: str, chars: str) -> str:
    text = _one_line(value, where)
    if not allowed.fullmatch(text):
        raise UnsafeValue(f"{text!r} cannot be written as {where}: only letters, digits and "
                          f"{chars} are accepted")
    return text


def shell_word(value: object) -> str:
    """One bash word (single-quoted when needed); newlines refused so no heredoc can end."""
    return shlex.quote(_one_line(value, "a shell script"))


BARE = re.compile(r"[A-Za-z0-9@._+-]+")


def bare_word(value: object) -> str:
    """A shell word that must stay unquoted (part of a function name): refused unless it
    needs no quoting at all."""
    return _only(value, BARE, "part of a shell name", "@ . _ + -")


def shell_words(values: Iterable[object]) -> str:
    """Words for a bash array: `(a 'b c')`'s inside."""
    return " ".join(shell_word(v) for v in values)


# systemd unit files: '%' starts a specifier; '\' and quotes are parsed in Exec lines;
# '$' expands variables in Exec lines. Plain settings take the rest of the line verbatim.
UNIT_SAFE = re.compile(r"[A-Za-z0-9_.,:/+@=\[\]-]*")


def unit_value(value: object) -> str:
    """A value for a `Key=value` line (a word in ExecStart= included)."""
    return _only(value, UNIT_SAFE, "a systemd unit value", "_ . , : / + @ = [ ] -")


def unit_words(words: object) -> str:
    """Space-separated words of a list-valued unit setting (RestrictAddressFamilies=), each
    a safe unit value."""
    if not isinstance(words, (list, tuple)):
        raise UnsafeValue(f"{words!r} is not a list of systemd unit words")
    return " ".join(unit_value(w) for w in words)


def unit_text(value: object) -> str:
    """Free text in a unit (Description=): specifiers escaped as %%."""
    return _one_line(value, "a systemd unit").replace("%", "%%")


# tmpfiles.d / sysusers.d: whitespace separates fields, '%' starts a specifier,
# '"' and '\' are parsed; a field must be non-empty.
FIELD_SAFE = re.compile(r"[A-Za-z0-9_.,:/+@=*?\[\]-]+")


def conf_field(value: object) -> str:
    return _only(value, FIELD_SAFE, "one field of a tmpfiles.d/sysusers.d line",
                 "_ . , : / + @ = - * ? [ ]")


def conf_value(value: object) -> str:
    """The value of a `key = value` line (sysctl.d, journald.conf, zram-generator.conf,
    loader entries): one line; the consumer takes it verbatim up to the newline."""
    return _one_line(value, "a configuration line")


def comment(value: object) -> str:
    """Text inside a '#' comment line."""
    return _one_line(value, "a comment")


FILTERS = {
    "sh": shell_word,
    "sh_words": shell_words,
    "bare": bare_word,
    "unit": unit_value,
    "unit_words": unit_words,
    "unit_text": unit_text,
    "field": conf_field,
    "value": conf_value,
    "comment": comment,
}
