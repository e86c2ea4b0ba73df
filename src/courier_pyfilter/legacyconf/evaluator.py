"""A restricted evaluator for the values of ``pythonfilter-modules.conf``.

The original program passed every value to Python's ``eval()``. Users therefore
write Python expressions: quoted strings, numbers, ``True``/``False``/``None``,
lists, tuples, dicts, sets and a little arithmetic such as ``60 * 60 * 24 * 30``
(which :func:`ast.literal_eval` refuses). :func:`evaluate` accepts exactly that
and nothing that could run code: no names, calls, attribute access, subscripts,
comprehensions or lambdas. Sizes are bounded so that ``'a' * 10**9`` or
``9 ** 9 ** 9`` are refused instead of exhausting memory or CPU.

The module is pure (no I/O); every failure is a :class:`ConfigValueError`.
"""

from __future__ import annotations

import ast
import math
import warnings
from typing import Any, NoReturn

from courier_pyfilter.legacyconf.errors import ConfigValueError

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_SIZE",
    "MAX_TEXT",
    "evaluate",
]

#: Longest value text accepted, in characters.
MAX_TEXT = 1_000_000
#: Budget of string characters / container items one value may build in total.
MAX_SIZE = 1_000_000
#: Largest integer accepted, in bits (about 3000 decimal digits).
MAX_INT_BITS = 10_000
#: Deepest nesting of expressions accepted.
MAX_DEPTH = 100

_Sized = str | bytes | list[Any] | tuple[Any, ...]
_SEQUENCES: tuple[type, ...] = (str, bytes, list, tuple)

_OPERATOR_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.MatMult: "@",
}

_FORBIDDEN_KINDS: dict[type[ast.AST], str] = {
    ast.Call: "function calls are not allowed",
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "'and'/'or' are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Slice: "slices are not allowed",
}

_BOOLEAN_LOOKALIKES = {
    "true": "True",
    "false": "False",
    "none": "None",
    "null": "None",
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__


class _Evaluator:
    """Walks a parsed expression, allowing only whitelisted nodes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.budget = MAX_SIZE

    # -- errors ---------------------------------------------------------------

    def fail(self, node: ast.AST | None, reason: str) -> NoReturn:
        lineno = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        raise ConfigValueError(
            self.text, reason, lineno=lineno, col=None if col is None else col + 1
        )

    def segment(self, node: ast.AST) -> str:
        source = ast.get_source_segment(self.text, node)
        if source is None:
            return ""
        source = " ".join(source.split())
        return source if len(source) <= 60 else source[:57] + "..."

    def spend(self, node: ast.AST, amount: int) -> None:
        self.budget -= amount
        if self.budget < 0:
            self.fail(node, f"value too large: more than {MAX_SIZE} characters or items in total")

    def check_int(self, node: ast.AST, value: object) -> None:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value.bit_length() > MAX_INT_BITS
        ):
            self.fail(node, f"number too large: more than {MAX_INT_BITS} bits")

    # -- walk -----------------------------------------------------------------

    def eval(self, node: ast.AST, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            self.fail(node, f"expression nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            self.name(node)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = [self.eval(elt, depth + 1) for elt in node.elts]
            self.spend(node, len(items))
            if isinstance(node, ast.Tuple):
                return tuple(items)
            if isinstance(node, ast.List):
                return items
            return self.build_set(node, items)
        if isinstance(node, ast.Dict):
            return self.build_dict(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        for kind, reason in _FORBIDDEN_KINDS.items():
            if isinstance(node, kind):
                segment = self.segment(node)
                self.fail(node, f"{reason}: {segment}" if segment else reason)
        self.fail(node, f"{type(node).__name__} expressions are not allowed")

    def constant(self, node: ast.Constant) -> Any:
        value = node.value
        if value is None or isinstance(value, bool | int | float):
            self.check_int(node, value)
            return value
        if isinstance(value, str | bytes):
            self.spend(node, len(value))
            return value
        if isinstance(value, complex):
            self.fail(node, f"complex numbers are not supported: {self.segment(node)}")
        self.fail(node, f"{self.segment(node) or type(value).__name__} is not allowed")

    def name(self, node: ast.Name) -> NoReturn:
        word = node.id
        proper = _BOOLEAN_LOOKALIKES.get(word.lower())
        if proper is not None and proper != word:
            self.fail(
                node,
                f"unquoted word {word!r}: write {proper} (capitalised) "
                f"or quote it as a string: {word!r}",
            )
        self.fail(node, f"unquoted word {word!r}: strings need quotes, write {word!r}")

    def build_set(self, node: ast.Set, items: list[Any]) -> set[Any]:
        try:
            return set(items)
        except TypeError:
            self.fail(
                node,
                f"set items must be hashable (no lists, dicts or sets inside a set): "
                f"{self.segment(node)}",
            )

    def build_dict(self, node: ast.Dict, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:
                self.fail(value_node, "'**' unpacking is not allowed")
            key = self.eval(key_node, depth + 1)
            value = self.eval(value_node, depth + 1)
            try:
                result[key] = value
            except TypeError:
                self.fail(
                    key_node,
                    f"dict keys must be hashable (no lists, dicts or sets as keys): "
                    f"{self.segment(key_node)}",
                )
        self.spend(node, len(node.keys))
        return result

    def unary(self, node: ast.UnaryOp, depth: int) -> Any:
        if not isinstance(node.op, ast.UAdd | ast.USub):
            symbol = "not" if isinstance(node.op, ast.Not) else "~"
            self.fail(node, f"operator {symbol!r} is not allowed (only unary + and -)")
        operand = self.eval(node.operand, depth + 1)
        if not _is_number(operand):
            self.fail(
                node,
                f"unary + and - need a number, not {_type_name(operand)}: {self.segment(node)}",
            )
        return +operand if isinstance(node.op, ast.UAdd) else -operand

    def binary(self, node: ast.BinOp, depth: int) -> Any:
        symbol = _OPERATOR_SYMBOLS.get(type(node.op), "?")
        if not isinstance(
            node.op, ast.Add | ast.Sub | ast.Mult | ast.Div | ast.FloorDiv | ast.Mod | ast.Pow
        ):
            self.fail(node, f"operator {symbol!r} is not allowed (only + - * / // % **)")
        left = self.eval(node.left, depth + 1)
        right = self.eval(node.right, depth + 1)
        try:
            if _is_number(left) and _is_number(right):
                result = self.arithmetic(node, left, right)
            elif isinstance(node.op, ast.Add):
                result = self.concatenate(node, left, right)
            elif isinstance(node.op, ast.Mult):
                result = self.repeat(node, left, right)
            elif isinstance(node.op, ast.Mod) and isinstance(left, str | bytes):
                self.fail(
                    node, f"string formatting with '%' is not supported: {self.segment(node)}"
                )
            else:
                self.fail(
                    node,
                    f"cannot apply {symbol!r} to {_type_name(left)} and {_type_name(right)}: "
                    f"{self.segment(node)}",
                )
        except ZeroDivisionError:
            self.fail(node, f"division by zero: {self.segment(node)}")
        except OverflowError:
            self.fail(node, f"number too large: {self.segment(node)}")
        self.check_int(node, result)
        return result

    def arithmetic(self, node: ast.BinOp, left: Any, right: Any) -> Any:
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
            ):
                self.fail(node, f"number too large: more than {MAX_INT_BITS} bits")
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            return left // right
        if isinstance(op, ast.Mod):
            return left % right
        # ast.Pow
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            # A lower bound of the result's size: refuse before computing it.
            and (abs(left).bit_length() - 1) * right > MAX_INT_BITS
        ):
            self.fail(node, f"number too large: more than {MAX_INT_BITS} bits")
        result = left**right
        if isinstance(result, complex):
            self.fail(node, f"result is a complex number: {self.segment(node)}")
        if isinstance(result, float) and not math.isfinite(result):
            self.fail(node, f"number too large: {self.segment(node)}")
        return result

    def concatenate(self, node: ast.BinOp, left: Any, right: Any) -> Any:
        if any(isinstance(left, kind) and isinstance(right, kind) for kind in _SEQUENCES):
            self.spend(node, len(left) + len(right))
            return left + right
        self.fail(
            node,
            f"cannot add {_type_name(left)} and {_type_name(right)}: {self.segment(node)}",
        )

    def repeat(self, node: ast.BinOp, left: Any, right: Any) -> Any:
        sequence: _Sized
        if isinstance(left, str | bytes | list | tuple) and isinstance(right, int):
            sequence, count = left, right
        elif isinstance(right, str | bytes | list | tuple) and isinstance(left, int):
            sequence, count = right, left
        else:
            self.fail(
                node,
                f"cannot multiply {_type_name(left)} by {_type_name(right)}: {self.segment(node)}",
            )
        if count > 0 and len(sequence) * count > MAX_SIZE:
            self.fail(node, f"value too large: more than {MAX_SIZE} characters or items")
        self.spend(node, len(sequence) * max(count, 0))
        return sequence * count


def _syntax_reason(text: str, error: SyntaxError) -> str:
    message = error.msg or "invalid syntax"
    where = ""
    if error.lineno is not None:
        where = f" at line {error.lineno}"
        if error.offset:
            where += f", column {error.offset}"
    reason = f"not a valid value ({message}{where})"
    stripped = text.strip()
    if (
        stripped
        and "\n" not in stripped
        and len(stripped) <= 200
        and not any(q in stripped for q in "'\"")
        and any(c.isalpha() for c in stripped)
    ):
        reason += f"; strings need quotes, write {stripped!r}"
    return reason


def evaluate(expr: str) -> Any:
    """Evaluate one configuration value written as a Python literal expression.

    Accepted: ``str`` (with implicit concatenation, raw and triple-quoted forms),
    ``bytes``, ``int``, ``float``, ``True``/``False``/``None``, tuples, lists,
    dicts and sets of those, unary ``+``/``-`` and binary
    ``+ - * / // % **`` with Python's meaning (``+`` also concatenates strings,
    bytes, lists and tuples; ``*`` also repeats them), parentheses and
    ``# comments``. Values may span several lines.

    Raises :class:`ConfigValueError` for anything else, with a message saying
    what is wrong (for example ``unquoted word 'dbm': strings need quotes,
    write 'dbm'``), and for values whose size would exceed :data:`MAX_SIZE`,
    :data:`MAX_INT_BITS`, :data:`MAX_DEPTH` or :data:`MAX_TEXT`.
    """
    if len(expr) > MAX_TEXT:
        raise ConfigValueError(expr, f"value too long: more than {MAX_TEXT} characters")
    source = expr.strip()
    prefix = expr[: len(expr) - len(expr.lstrip())]
    line_shift = prefix.count("\n")
    col_shift = len(prefix) - (prefix.rfind("\n") + 1)

    def shifted(lineno: int | None, col: int | None) -> tuple[int | None, int | None]:
        if lineno is None:
            return None, col
        if lineno == 1 and col is not None:
            col += col_shift
        return lineno + line_shift, col

    if not source:
        raise ConfigValueError(expr, "empty value: write a Python value such as '' or None")
    try:
        with warnings.catch_warnings():
            # e.g. "invalid escape sequence" in a non-raw regex: eval() accepted it too.
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        lineno, col = shifted(error.lineno, error.offset)
        raise ConfigValueError(
            expr, _syntax_reason(source, error), lineno=lineno, col=col
        ) from None
    except (RecursionError, MemoryError):
        raise ConfigValueError(expr, "expression nested too deeply") from None
    except ValueError as error:  # e.g. NUL characters on older Python versions
        raise ConfigValueError(expr, f"not a valid value ({error})") from None
    evaluator = _Evaluator(source)
    try:
        return evaluator.eval(tree.body)
    except ConfigValueError as error:
        error.text = expr
        error.lineno, error.col = shifted(error.lineno, error.col)
        raise
    except RecursionError:
        raise ConfigValueError(expr, "expression nested too deeply") from None
