"""A small, safe arithmetic expression language for derived fields and constraints.

Expressions are parsed with :mod:`ast` and only a whitelist of nodes is accepted: numbers,
strings, booleans, names of other fields, ``+ - * / // % **``, comparisons (chained too),
``and``/``or``/``not``, a conditional ``a if cond else b`` and the functions ``min``, ``max``,
``int``, ``float``, ``round``, ``abs``, ``log2``. Nothing is ever passed to :func:`eval`.

Every expression is bounded: at most :data:`MAX_CHARS` characters and :data:`MAX_NODES` syntax
nodes, arithmetic on numbers only, exponents of ``**`` within :data:`MAX_EXPONENT` and integer
results within :data:`MAX_INT_BITS` bits, so no expression can hang or exhaust memory.

Example:
    >>> Expression.parse("gpus // tp", field="dp").evaluate({"gpus": 8, "tp": 2})
    4
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field

from servetune import ConfigError

__all__ = ["Expression", "MAX_CHARS", "MAX_NODES", "MAX_EXPONENT", "MAX_INT_BITS"]

MAX_CHARS = 2000
MAX_NODES = 500
MAX_EXPONENT = 64
MAX_INT_BITS = 4096

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FUNCTIONS = {"min": min, "max": max, "int": int, "float": float, "round": round, "abs": abs,
              "log2": math.log2}


@dataclass(frozen=True)
class Expression:
    """A parsed expression; ``names`` are the fields it reads."""

    text: str
    tree: ast.Expression = field(repr=False, compare=False)
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str, *, field: str | None = None, path: str | None = None) -> "Expression":
        """Parse and validate ``text``; raises :class:`ConfigError` naming the field."""
        where = f"{path}: " if path else ""
        where += f"'{field}': " if field else ""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}expected an expression string, got {text!r:.80}")
        if len(text) > MAX_CHARS:
            raise ConfigError(f"{where}expression of {len(text):,d} characters; expected at most "
                              f"{MAX_CHARS:,d}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"{where}cannot parse expression {text!r:.200}: {exc.msg}") from None
        except (RecursionError, MemoryError, ValueError):
            raise ConfigError(f"{where}expression {text[:80]!r}... is nested too deeply") from None
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_NODES:
            raise ConfigError(f"{where}expression has {len(nodes):,d} syntax nodes; expected at "
                              f"most {MAX_NODES}")
        names: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Name):
                if node.id not in _FUNCTIONS:
                    names.add(node.id)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                    raise ConfigError(f"{where}only the functions {', '.join(_FUNCTIONS)} may be "
                                      f"called in {text!r}")
                if node.keywords:
                    raise ConfigError(f"{where}keyword arguments are not allowed in {text!r}")
            elif not isinstance(node, (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp,
                                       ast.BoolOp, ast.Compare, ast.IfExp, ast.Load,
                                       ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
                                       *_BINARY, *_COMPARE)):
                raise ConfigError(f"{where}{type(node).__name__} is not allowed in expression "
                                  f"{text!r}")
        return cls(text.strip(), tree, frozenset(names))

    def evaluate(self, values: dict):
        """The expression's value given field ``values``; unknown names raise ConfigError."""
        try:
            return _eval(self.tree.body, values)
        except KeyError as exc:
            raise ConfigError(f"expression {self.text!r} reads {exc.args[0]!r}, which is not a "
                              f"field; fields are: {', '.join(sorted(values))}") from None
        except ZeroDivisionError:
            raise ConfigError(f"expression {self.text!r} divides by zero with "
                              f"{ {n: values.get(n) for n in sorted(self.names)} }") from None
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            raise ConfigError(f"expression {self.text!r} cannot be evaluated with "
                              f"{ {n: values.get(n) for n in sorted(self.names)} }: {exc}"
                              ) from None

    def __str__(self) -> str:
        return self.text


def _eval(node: ast.AST, values: dict):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _arithmetic(type(node.op), _eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            _number(operand, "-" if isinstance(node.op, ast.USub) else "+")
            return -operand if isinstance(node.op, ast.USub) else +operand
        return not operand
    if isinstance(node, ast.BoolOp):
        results = (_eval(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, values) else node.orelse, values)
    if isinstance(node, ast.Call):
        return _bounded(_FUNCTIONS[node.func.id](*(_eval(a, values) for a in node.args)))
    raise ConfigError(f"unsupported expression node {type(node).__name__}")  # pragma: no cover


def _number(value, op: str) -> None:
    if not isinstance(value, (int, float)):
        raise TypeError(f"'{op}' needs numbers, got {value!r:.40}")


def _arithmetic(op: type, left, right):
    """``left op right`` on numbers only, with ``**`` and integer sizes bounded."""
    symbol = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
              ast.Mod: "%", ast.Pow: "**"}[op]
    _number(left, symbol)
    _number(right, symbol)
    if op is ast.Pow:
        if abs(right) > MAX_EXPONENT:
            raise ValueError(f"an exponent of {right!r:.40} is beyond the limit of "
                             f"{MAX_EXPONENT}")
        if isinstance(left, complex) or (left < 0 and not float(right).is_integer()):
            raise ValueError("a negative number to a fractional power")
    return _bounded(_BINARY[op](left, right))


def _bounded(value):
    if isinstance(value, int) and not isinstance(value, bool) and \
            value.bit_length() > MAX_INT_BITS:
        raise OverflowError(f"an integer of more than {MAX_INT_BITS} bits")
    if isinstance(value, complex):
        raise ValueError("a complex number")
    return value
