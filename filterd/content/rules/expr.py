"""The small Perl expression language of ``meta`` rules and ``if (...)`` lines.

SpamAssassin compiles these to Perl and evals them; filterd never evals text from a rule
file: it parses the expression into a Python syntax tree built node by node (names,
numbers and operators only, never text from the file), which is compiled once at load
time. The evaluator turns every meta of a rule set into one Python function over local
variables (see :func:`compile_metas`), which is what makes 700 metas cost a fraction of
a millisecond per message. Semantics follow Perl on numbers: ``&&``/``||`` return the
deciding operand (so ``(A || B) + C`` counts), ``!`` gives 1 or 0, comparisons give 1 or
0, division by zero gives 0 (Perl would die, and SpamAssassin would then treat the rule
as not hit).
"""

from __future__ import annotations

import ast
import re
from typing import Callable, Mapping, Sequence

Value = float
Evaluator = Callable[[Mapping[str, Value]], Value]
#: Makes the syntax tree of a rule name's value (a dict lookup, a local variable...).
NameNode = Callable[[str], ast.expr]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!()]))"
)
_WORDS = {"and": "&&", "or": "||", "not": "!"}
# binary operators by precedence level, lowest first (Perl's order)
_LEVELS: list[tuple[str, ...]] = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/")]
_ARITH: dict[str, ast.operator] = {"+": ast.Add(), "-": ast.Sub(), "*": ast.Mult()}
_COMPARE: dict[str, ast.cmpop] = {"<": ast.Lt(), ">": ast.Gt(), "<=": ast.LtE(), ">=": ast.GtE(),
                                   "==": ast.Eq(), "!=": ast.NotEq()}
_ZERO, _ONE = 0.0, 1.0
#: Deepest nesting of parentheses and unary operators the parser follows (SpamAssassin's
#: rules nest a few levels); deeper is an error, not a Python RecursionError.
MAX_NESTING = 50
#: Deepest syntax tree Python is given to compile (a chain of 125 ``+`` is about 125
#: deep in SpamAssassin's __FORM_FRAUD; Python's compiler gives up near 1,000).
MAX_DEPTH = 400


def _div(a: Value, b: Value) -> Value:
    """Perl's ``/`` as SpamAssassin's metas get it: a division by zero is 0."""
    return a / b if b else 0.0


#: The names a compiled expression's code may use besides its own.
_GLOBALS: dict[str, object] = {"__builtins__": {}, "_div": _div}


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
    """Recursive descent over the tokens, building a Python syntax tree of the expression."""

    def __init__(self, tokens: list[tuple[str, str]], name_node: NameNode):
        self.tokens = tokens
        self.pos = 0
        self.names: set[str] = set()
        self.name_node = name_node
        self.nesting = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExprError("expression ends too early")
        self.pos += 1
        return tok

    def parse(self) -> ast.expr:
        if not self.tokens:
            raise ExprError("empty expression")
        node = self.binary(0)
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        if _tree_depth(node) > MAX_DEPTH:
            raise ExprError(f"expression nested deeper than {MAX_DEPTH} operations")
        return node

    def binary(self, level: int) -> ast.expr:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in _LEVELS[level]:
            self.pos += 1
            right = self.binary(level + 1)
            left = _combine(tok[1], left, right)
        return left

    def unary(self) -> ast.expr:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExprError(f"expression nested deeper than {MAX_NESTING} levels")
        try:
            return self._unary()
        finally:
            self.nesting -= 1

    def _unary(self) -> ast.expr:
        kind, value = self.take()
        if kind == "op" and value == "!":
            return ast.IfExp(test=self.unary(), body=ast.Constant(_ZERO), orelse=ast.Constant(_ONE))
        if kind == "op" and value == "-":
            return ast.UnaryOp(op=ast.USub(), operand=self.unary())
        if kind == "op" and value == "+":
            return self.unary()
        if kind == "op" and value == "(":
            inner = self.binary(0)
            if self.take() != ("op", ")"):
                raise ExprError("missing ')'")
            return inner
        if kind == "num":
            return ast.Constant(float(value))
        if kind == "name":
            self.names.add(value)
            return self.name_node(value)
        raise ExprError(f"unexpected {value!r}")


def _combine(op: str, a: ast.expr, b: ast.expr) -> ast.expr:
    if op == "&&":
        return ast.BoolOp(op=ast.And(), values=[a, b])
    if op == "||":
        return ast.BoolOp(op=ast.Or(), values=[a, b])
    if op in _ARITH:
        return ast.BinOp(left=a, op=_ARITH[op], right=b)
    if op == "/":
        return ast.Call(func=ast.Name("_div", ast.Load()), args=[a, b], keywords=[])
    if op in _COMPARE:
        return ast.IfExp(test=ast.Compare(left=a, ops=[_COMPARE[op]], comparators=[b]),
                         body=ast.Constant(_ONE), orelse=ast.Constant(_ZERO))
    raise ExprError(f"unknown operator {op!r}")  # pragma: no cover - _LEVELS lists them all


def _tree_depth(node: ast.AST) -> int:
    """Depth of a syntax tree, walked without recursion (the tree may be deep)."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


def parse_expr(text: str, name_node: NameNode) -> tuple[ast.expr, set[str]]:
    """The syntax tree of an expression, each rule name made by ``name_node``, and the
    names it reads."""
    parser = _Parser(tokenize(text), name_node)
    node = parser.parse()
    return node, parser.names


def _lookup(name: str) -> ast.expr:
    """``h.get(name, 0.0)``: a name read from the mapping a standalone evaluator gets."""
    return ast.Call(func=ast.Attribute(ast.Name("h", ast.Load()), "get", ast.Load()),
                    args=[ast.Constant(name), ast.Constant(_ZERO)], keywords=[])


def compile_expr(text: str) -> tuple[Evaluator, set[str]]:
    """Compile an expression; returns the evaluator (names looked up in the mapping it is
    given, 0 when absent) and the names it reads."""
    node, names = parse_expr(text, _lookup)
    args = ast.arguments(posonlyargs=[], args=[ast.arg("h")], kwonlyargs=[], kw_defaults=[], defaults=[])
    tree = ast.fix_missing_locations(ast.Expression(ast.Lambda(args=args, body=node)))
    fn: Evaluator = eval(compile(tree, "<meta>", "eval"), dict(_GLOBALS))  # noqa: S307 - a tree built here
    return fn, names


def compile_metas(metas: Sequence[tuple[str, str]], clear: bool = False) -> Callable[[dict[str, Value]], None]:
    """One function evaluating ``metas`` (name, expression), in the order given, over a
    dict of rule results: it reads every other rule the expressions name from the dict
    once, holds each meta's value in a local variable, and stores the metas whose value is
    not 0 in the dict (with ``clear``, also removes those whose value is 0, for running
    again over a dict that holds an earlier result). ``metas`` must come ordered so that
    a meta follows the metas it reads and must all parse (:func:`compile_expr` checks one).

    Why: evaluated one by one, each meta walks its expression through dict lookups and
    Python calls; as one function over locals, the whole set is straight-line bytecode.
    """
    local: dict[str, str] = {}

    def name_node(name: str) -> ast.expr:
        if name not in local:
            local[name] = f"v{len(local)}"
        return ast.Name(local[name], ast.Load())

    assigned: list[tuple[str, str, ast.expr]] = []
    for name, text in metas:
        node, _ = parse_expr(text, name_node)
        var = local.setdefault(name, f"v{len(local)}")
        assigned.append((name, var, node))
    metas_names = {name for name, _ in metas}
    get = ast.Attribute(ast.Name("h", ast.Load()), "get", ast.Load())
    body: list[ast.stmt] = [  # every rule read that no meta here computes: its result, or 0
        ast.Assign([ast.Name(var, ast.Store())],
                   ast.Call(get, [ast.Constant(name), ast.Constant(_ZERO)], []))
        for name, var in local.items() if name not in metas_names]
    for name, var, node in assigned:
        body.append(ast.Assign([ast.Name(var, ast.Store())], node))
        store = ast.Assign([ast.Subscript(ast.Name("h", ast.Load()), ast.Constant(name), ast.Store())],
                           ast.Name(var, ast.Load()))
        drop: list[ast.stmt] = []
        if clear:
            pop = ast.Attribute(ast.Name("h", ast.Load()), "pop", ast.Load())
            drop.append(ast.Expr(ast.Call(pop, [ast.Constant(name), ast.Constant(None)], [])))
        body.append(ast.If(test=ast.Name(var, ast.Load()), body=[store], orelse=drop))
    if not body:
        body.append(ast.Pass())
    args = ast.arguments(posonlyargs=[], args=[ast.arg("h")], kwonlyargs=[], kw_defaults=[], defaults=[])
    func = ast.FunctionDef(name="_metas", args=args, body=body, decorator_list=[], returns=None,
                           type_comment=None)
    module = ast.fix_missing_locations(ast.Module(body=[func], type_ignores=[]))
    namespace = dict(_GLOBALS)
    exec(compile(module, "<metas>", "exec"), namespace)  # noqa: S102 - a tree built here
    result: Callable[[dict[str, Value]], None] = namespace["_metas"]  # type: ignore[assignment]
    return result
