"""The package layout's import rules (docs: DESIGN.md, "Package layout"), read from the code.

Only module-level imports count (those inside functions run late and are the exception the
rules exist to make unnecessary, so they are listed too where a rule names them). A *part*
is a sub-package of ``filterd`` (``filterd.restrict``) or a top-level module
(``filterd.log``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "filterd"

ENGINES = frozenset({"config", "maps", "restrict", "dnsbl", "greylist", "content"})
FRONT_ENDS = frozenset({"policy", "filter", "milter", "mta"})
SMTP_LIBRARIES = ("aiosmtpd", "aiosmtplib")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The absolute names ``node`` imports (``from . import x`` names the sub-module x)."""
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" for a in node.names] if not node.module else [prefix]


def _module_level_imports(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Imports executed when the module loads: top level, and inside top-level ``if`` and
    ``try`` blocks (``if TYPE_CHECKING:`` included: it is a dependency all the same)."""
    found: list[str] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.extend(_resolve(module, is_package, node))
            elif isinstance(node, (ast.If, ast.Try)):
                for field in ("body", "orelse", "handlers", "finalbody"):
                    for sub in getattr(node, field, []):
                        walk(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])

    walk(tree.body)
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _collect() -> dict[str, list[str]]:
    """Every filterd module and the modules it imports at load time."""
    table: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text("utf-8"), str(path))
        table[module] = _module_level_imports(tree, module, path.name == "__init__.py")
    return table


IMPORTS = _collect()


def _part_edges() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the module imports that make the edge (for the message)."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, imported in IMPORTS.items():
        for target in imported:
            if target == "filterd" or not target.startswith("filterd."):
                continue
            if _part(target) != _part(module):
                edges[_part(module)][_part(target)].append(f"{module} -> {target}")
    return edges


EDGES = _part_edges()


def _offending(sources: frozenset[str] | set[str], forbidden: frozenset[str] | set[str],
               allow_same: bool = True) -> list[str]:
    return [line for src in sorted(sources) for dst in sorted(forbidden)
            if not (allow_same and src == dst) for line in EDGES.get(src, {}).get(dst, [])]


def test_no_engine_imports_a_front_end() -> None:
    assert _offending(ENGINES, FRONT_ENDS) == []


def test_no_front_end_imports_another() -> None:
    assert _offending(FRONT_ENDS, FRONT_ENDS) == []


def test_config_imports_no_engine_and_no_front_end() -> None:
    assert _offending({"config"}, (ENGINES - {"config"}) | FRONT_ENDS) == []


def test_smtp_and_filter_parts_exist() -> None:
    assert (ROOT / "smtp" / "__init__.py").is_file()
    assert (ROOT / "filter" / "__init__.py").is_file()


def test_content_imports_no_smtp_library() -> None:
    """The content pipeline is protocol-free: SMTP plumbing lives in filterd.smtp."""
    offending = [f"{module} -> {target}" for module, imported in IMPORTS.items()
                 if _part(module) == "content" for target in imported
                 if target.split(".")[0] in SMTP_LIBRARIES]
    assert offending == []


def test_smtp_holds_no_policy() -> None:
    """filterd.smtp is plumbing used by filter, mta and quarantine release: no engine."""
    assert _offending({"smtp"}, (ENGINES - {"config"}) | FRONT_ENDS) == []


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one part (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted({_part(m) for m in IMPORTS}):
        if v not in index:
            visit(v)
    return groups


def test_no_two_parts_import_each_other_in_a_cycle() -> None:
    assert _cycles() == []


def test_the_reader_sees_imports_where_they_are() -> None:
    """The rules above are only as good as the parser: it finds a top-level import, one
    under ``if``/``try``, relative imports, and skips one inside a function."""
    source = ("import filterd.log\n"
              "from . import sibling\n"
              "from ..maps import access\n"
              "try:\n    from filterd.policy import x\nexcept ImportError:\n    pass\n"
              "if True:\n    import aiosmtpd\n"
              "def f():\n    import filterd.mta\n")
    found = _module_level_imports(ast.parse(source), "filterd.restrict.chain", False)
    assert found == ["filterd.log", "filterd.restrict.sibling", "filterd.maps",
                     "filterd.policy", "aiosmtpd"]
