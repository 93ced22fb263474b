"""The small Perl expression language of ``meta`` rules and ``if (...)`` lines.

SpamAssassin compiles these to Perl and evals them; filterd never evals text from a rule
file: it parses the expression into nested closures once, at load time. Semantics follow
Perl on numbers: ``&&``/``||`` return the deciding operand (so ``(A || B) + C`` counts),
``!`` gives 1 or 0, comparisons give 1 or 0, division by zero gives 0 (Perl would die, and
SpamAssassin would then treat the rule as not hit).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

Value = float
Evaluator = Callable[[Mapping[str, Value]], Value]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!()]))"
)
_WORDS = {"and": "&&", "or": "||", "not": "!"}
# binary operators by precedence level, lowest first (Perl's order)
_LEVELS: list[tuple[str, ...]] = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/")]


class ExprError(ValueError):
    """An expression that does not parse."""


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; kind is ``num``, ``name`` or ``op``."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected {text[pos:pos + 20].strip()!r}")
        kind = m.lastgroup or "op"
        value = m.group(kind)
        if kind == "name" and value in _WORDS:
            kind, value = "op", _WORDS[value]
        tokens.append((kind, value))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.pos = 0
        self.names: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExprError("expression ends too early")
        self.pos += 1
        return tok

    def parse(self) -> Evaluator:
        if not self.tokens:
            raise ExprError("empty expression")
        fn = self.binary(0)
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return fn

    def binary(self, level: int) -> Evaluator:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in _LEVELS[level]:
            self.pos += 1
            right = self.binary(level + 1)
            left = _combine(tok[1], left, right)
        return left

    def unary(self) -> Evaluator:
        kind, value = self.take()
        if kind == "op" and value == "!":
            inner = self.unary()
            return lambda h: 0.0 if inner(h) else 1.0
        if kind == "op" and value == "-":
            inner = self.unary()
            return lambda h: -inner(h)
        if kind == "op" and value == "+":
            return self.unary()
        if kind == "op" and value == "(":
            inner = self.binary(0)
            if self.take() != ("op", ")"):
                raise ExprError("missing ')'")
            return inner
        if kind == "num":
            number = float(value)
            return lambda h: number
        if kind == "name":
            self.names.add(value)
            return lambda h: h.get(value, 0.0)
        raise ExprError(f"unexpected {value!r}")


def _combine(op: str, a: Evaluator, b: Evaluator) -> Evaluator:
    if op == "&&":
        return lambda h: (x if not (x := a(h)) else b(h))
    if op == "||":
        return lambda h: (x if (x := a(h)) else b(h))
    if op == "+":
        return lambda h: a(h) + b(h)
    if op == "-":
        return lambda h: a(h) - b(h)
    if op == "*":
        return lambda h: a(h) * b(h)
    if op == "/":
        return lambda h: (a(h) / y) if (y := b(h)) else 0.0
    if op == "<":
        return lambda h: float(a(h) < b(h))
    if op == ">":
        return lambda h: float(a(h) > b(h))
    if op == "<=":
        return lambda h: float(a(h) <= b(h))
    if op == ">=":
        return lambda h: float(a(h) >= b(h))
    if op == "==":
        return lambda h: float(a(h) == b(h))
    if op == "!=":
        return lambda h: float(a(h) != b(h))
    raise ExprError(f"unknown operator {op!r}")  # pragma: no cover - _LEVELS lists them all


def compile_expr(text: str) -> tuple[Evaluator, set[str]]:
    """Compile an expression; returns the evaluator and the names it reads."""
    parser = _Parser(tokenize(text))
    fn = parser.parse()
    return fn, parser.names
