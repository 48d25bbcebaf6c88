"""Static check of zram-generator `zram-size` expressions.

zram-generator evaluates the expression (in MiB, with `ram` bound to total memory in
MiB) with the fasteval crate. We accept the subset of that grammar people use and
evaluate it for a few RAM sizes, so a profile cannot carry an expression the generator
would reject or one that yields a non-positive size. The real generator is run on
rendered output in the tests.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
    "abs": abs,
}
OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Pow)


class ZramExpressionError(ValueError):
    pass


def _eval(node: ast.AST, ram: float) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body, ram)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(
        node.value, bool
    ):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "ram":
        return ram
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand, ram)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, OPERATORS):
        left, right = _eval(node.left, ram), _eval(node.right, ram)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Pow):
            return float(left**right)
        if right == 0:
            raise ZramExpressionError("division by zero")
        return left / right if isinstance(node.op, ast.Div) else left % right
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
        and node.args
    ):
        return float(FUNCTIONS[node.func.id](*(_eval(a, ram) for a in node.args)))
    raise ZramExpressionError("unsupported element")


def evaluate(expr: str, ram_mib: float) -> float:
    try:
        tree = ast.parse(expr.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ZramExpressionError("not parseable") from None
    return _eval(tree, ram_mib)


def check_zram_expression(expr: str) -> None:
    """Raise ZramExpressionError with one sentence if zram-generator would reject expr."""
    accepted = (
        "use arithmetic (+ - * / ^) on numbers and 'ram' (MiB) with min/max/floor/ceil/"
        "round/abs, e.g. 'min(ram / 2, 4096)'"
    )
    if not expr.strip() or len(expr) > 200:
        raise ZramExpressionError(f"zram size {expr!r} is empty or too long; {accepted}")
    try:
        for ram in (512.0, 8192.0, 65536.0):
            value = evaluate(expr, ram)
            if not math.isfinite(value) or value <= 0:
                raise ZramExpressionError(
                    f"zram size {expr!r} gives {value:g} MiB with {ram:g} MiB of RAM; "
                    "it must be positive"
                )
    except ZramExpressionError as exc:
        if str(exc).startswith("zram size"):
            raise
        raise ZramExpressionError(f"zram size {expr!r} is not valid ({exc}); {accepted}") from None
    except (OverflowError, TypeError, ValueError):
        raise ZramExpressionError(f"zram size {expr!r} is not valid; {accepted}") from None
