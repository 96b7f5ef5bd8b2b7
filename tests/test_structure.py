"""Structure rules for ``src/prunewise``, checked by reading the source with ``ast`` (nothing is
imported, so a broken module cannot hide a violation).

Rules (docs/architecture.md explains why):

(a) No import cycle among prunewise modules. Every import counts: module level, inside a
    function, ``import prunewise.x``, ``from . import x`` and ``from .x import name``.
    How an import becomes an edge of the module graph:

    * ``from P import n``: if ``P.n`` is a prunewise module (a file or a package), the edge goes to
      it; otherwise ``n`` is a name defined in ``P`` and the edge goes to ``P`` (for a package, to
      its ``__init__``). So ``from prunewise.data import load`` inside ``prunewise.data.cifar`` is
      an edge to the package ``prunewise.data``, and ``from . import cifar`` inside the package's
      ``__init__`` is an edge to ``prunewise.data.cifar``. If both exist, that is a cycle and is
      reported: the submodule then runs while its package is half-initialized. Import the
      sibling module that defines the name instead.
    * ``import P.Q`` is an edge to ``P.Q`` (the parents Python also loads are not counted).
    * ``prunewise/__init__.py`` re-exports the public API, so it imports nearly everything; it is
      excluded as a SOURCE of edges (it would close a cycle with every module that imports
      ``prunewise``), but it stays a TARGET: a library module that imports the root package
      depends on the whole API and is reported by rule (b).

(b) Layers: a module may import only from its own layer or lower ones (cycles inside a layer are
    rule (a)'s job). A module's layer is that of the longest prefix of its name (under ``prunewise``)
    listed in ``LAYERS`` (``prunewise.unstructured.engine`` -> ``unstructured.engine``,
    ``prunewise.unstructured.fvw`` -> ``unstructured``); a module no layer names fails the test with its
    name, so a new module has to be placed deliberately in ``LAYERS``.

(c) No function (or method) longer than ``MAX_FUNCTION_LINES`` lines, counted from the ``def``
    line to its last line (docstring and nested functions included, decorators excluded).

(d) No function with more than ``MAX_PARAMS`` parameters (every parameter counts, ``*args`` /
    ``**kwargs`` / ``self`` included) but those in ``WIDE_ALLOWED`` and click command functions
    (decorated with ``click.*`` or ``<group>.command`` / ``<group>.group``), whose parameters
    are the command's options.

(e) No private name (one leading underscore, not a dunder) imported from another prunewise
    module, and no ``module._name`` attribute read on a prunewise module bound by an import.

(f) No reference to the project's internal notes (the spec and design files, the shared folder,
    or issue numbers) in ``src/``, ``tests/``, ``benchmarks/`` or ``README.md``: the repository
    must stand on its own.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "prunewise"

# Highest layer first. A module may import from its own layer and the layers after it. A
# module's layer is that of the longest dotted prefix of its name listed here
# ("unstructured.engine" before "unstructured").
LAYERS: list[tuple[str, set[str]]] = [
    ("api", {"__init__", "__main__", "cli"}),   # "__init__" = the root package prunewise itself
    ("pipelines", {"pipeline"}),
    ("methods", {"unstructured", "structured"}),
    ("engines", {"unstructured.engine", "structured.engine", "structured.surgery",
                 "checkpoints", "interop", "repair"}),
    ("core", {"plan", "train", "measure", "layers", "tasks", "sequential", "hf"}),
    ("inputs", {"data", "models"}),
    ("base", {"utils", "errors", "schema", "files", "device", "dist", "checks", "methods",
              "settings", "names"}),
]
MAX_FUNCTION_LINES = 80
MAX_PARAMS = 12
WIDE_ALLOWED: set[str] = set()  # none: group settings into a dataclass
CLICK_DECORATOR_ATTRS = {"command", "group"}


# --------------------------------------------------------------------------- reading the package
@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under src/prunewise (packages by __init__)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


@lru_cache(maxsize=None)
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def rel(name: str) -> str:
    return str(modules()[name].relative_to(ROOT))


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def base_of(name: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom reads from (None when it is not prunewise)."""
    if node.level == 0:
        mod = node.module or ""
    else:
        pkg = name.split(".") if is_package(name) else name.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        mod = ".".join(pkg + ([node.module] if node.module else []))
    return mod if mod == "prunewise" or mod.startswith("prunewise.") else None


def known(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a prunewise module."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules():
            return cand
    return None


def imports(name: str) -> list[tuple[str, int, str | None]]:
    """(target module, line, imported name or None) for every prunewise import in ``name``."""
    out = []
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "prunewise" or a.name.startswith("prunewise."):
                    target = known(a.name)
                    if target:
                        out.append((target, node.lineno, None))
        elif isinstance(node, ast.ImportFrom):
            base = base_of(name, node)
            if base is None:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules():
                    out.append((sub, node.lineno, None))
                else:
                    target = known(base)
                    if target:
                        out.append((target, node.lineno, a.name))
    return out


def edges() -> dict[str, dict[str, int]]:
    """source -> {target: first line}; the root package is not a source (see rule (a))."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name in modules():
        if name == "prunewise":
            continue
        for target, line, _ in imports(name):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


# --------------------------------------------------------------------------- (a) cycles
def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for t in graph.values() for w in t}):
        if v not in index:
            visit(v)
    return out


def cycle_violations() -> list[str]:
    graph = edges()
    out = []
    for comp in find_cycles(graph):
        inside = set(comp)
        links = [f"{a} -> {b} ({rel(a)}:{graph[a][b]})" for a in comp for b in sorted(graph[a])
                 if b in inside]
        out.append(f"import cycle among {', '.join(comp)}: " + "; ".join(links))
    return out


def test_no_import_cycles():
    found = cycle_violations()
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- (b) layers
def layer_of(name: str) -> int | None:
    parts = name.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        for i, (_, members) in enumerate(LAYERS):
            if key in members:
                return i
    return None


def layer_violations() -> list[str]:
    out = []
    for name in modules():
        if layer_of(name) is None:
            out.append(f"{name} ({rel(name)}) is in no layer: add '{name.split('.')[1]}' to "
                       f"LAYERS in tests/test_structure.py (and to docs/architecture.md)")
    for src, targets in sorted(edges().items()):
        ls = layer_of(src)
        for dst, line in sorted(targets.items()):
            ld = layer_of(dst)
            if ls is None or ld is None:
                continue
            if ld < ls:
                out.append(f"{rel(src)}:{line}: {src} (layer '{LAYERS[ls][0]}') imports {dst} "
                           f"(higher layer '{LAYERS[ld][0]}')")
    return out


def test_layers():
    found = layer_violations()
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- (c), (d) functions
def functions(name: str):
    return [n for n in ast.walk(tree(name)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_functions() -> list[str]:
    out = []
    for name in modules():
        for fn in functions(name):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{rel(name)}:{fn.lineno}: {fn.name} is {length} lines "
                           f"(limit {MAX_FUNCTION_LINES})")
    return out


def test_no_long_functions():
    found = long_functions()
    assert not found, "\n".join(found)


def click_names(name: str) -> set[str]:
    """Local names bound to click or to something imported from it."""
    out = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name == "click"}
        elif isinstance(node, ast.ImportFrom) and node.module == "click" and node.level == 0:
            out |= {a.asname or a.name for a in node.names}
    return out


def is_click_command(fn, clicky: set[str]) -> bool:
    for dec in fn.decorator_list:
        d = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(d, ast.Attribute) and d.attr in CLICK_DECORATOR_ATTRS:
            return True
        while isinstance(d, ast.Attribute):
            d = d.value
        if isinstance(d, ast.Name) and d.id in clicky:
            return True
    return False


def param_count(fn) -> int:
    a = fn.args
    return (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None)
            + (a.kwarg is not None))


def wide_signatures() -> list[str]:
    out = []
    for name in modules():
        clicky = click_names(name)
        for fn in functions(name):
            n = param_count(fn)
            if n > MAX_PARAMS and not is_click_command(fn, clicky) \
                    and f"{name}.{fn.name}" not in WIDE_ALLOWED:
                out.append(f"{rel(name)}:{fn.lineno}: {fn.name} has {n} parameters")
    return out


def test_no_wide_signatures():
    found = wide_signatures()
    assert not found, (f"signatures over {MAX_PARAMS} parameters (group the settings into a "
                       f"dataclass):\n" + "\n".join(found))


# --------------------------------------------------------------------------- (e) private names
def module_bindings(name: str) -> dict[str, str]:
    """Local name -> prunewise module, for names bound by an import to a prunewise module."""
    out = {}
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "prunewise" or a.name.startswith("prunewise."):
                    if a.asname:
                        out[a.asname] = known(a.name) or a.name
                    else:
                        out[a.name.split(".")[0]] = "prunewise"
        elif isinstance(node, ast.ImportFrom):
            base = base_of(name, node)
            if base is None:
                continue
            for a in node.names:
                if f"{base}.{a.name}" in modules():
                    out[a.asname or a.name] = f"{base}.{a.name}"
    return out


def resolve(expr: ast.expr, bound: dict[str, str]) -> str | None:
    """The prunewise module an expression like ``files`` or ``prunewise.files`` names."""
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        parent = resolve(expr.value, bound)
        if parent and f"{parent}.{expr.attr}" in modules():
            return f"{parent}.{expr.attr}"
    return None


def private_violations() -> list[str]:
    out = []
    for name in modules():
        for target, line, imported in imports(name):
            if imported and is_private(imported) and target != name:
                out.append(f"{rel(name)}:{line}: imports private name {imported} from {target}")
        bound = module_bindings(name)
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                mod = resolve(node.value, bound)
                if mod and mod != name:
                    out.append(f"{rel(name)}:{node.lineno}: reads private {mod}.{node.attr}")
    return out


def test_no_private_names_across_modules():
    found = private_violations()
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- (f) references
# Built from pieces so that this file does not match itself.
REFERENCES = [
    ("the spec", re.compile(re.escape("METHODS" + ".md"))),
    ("the design notes", re.compile(re.escape("DESIGN" + ".md"))),
    ("the shared folder", re.compile(r"(?<![\w-])" + "shared" + "/")),
    ("an issue number", re.compile("iss" + r"ues?\s*#?\d+", re.IGNORECASE)),
]
TEXT_SUFFIXES = {".py", ".md", ".json", ".txt", ".toml", ".cfg", ".ini", ".sh", ".yaml", ".yml",
                 ".csv", ".rst"}
SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def scanned_files() -> list[Path]:
    out = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    for top in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and not parts & SKIP_DIRS
                    and not any(p.endswith(".egg-info") for p in parts)):
                out.append(path)
    return out


def reference_violations() -> list[str]:
    out = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for what, pattern in REFERENCES:
                m = pattern.search(line)
                if m:
                    out.append(f"{path.relative_to(ROOT)}:{i}: mentions {what} ({m.group(0)!r})")
    return out


def test_no_internal_references():
    found = reference_violations()
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- the checker itself
def test_checker_sees_the_package():
    names = modules()
    assert "prunewise.errors" in names and "prunewise.unstructured.fvw" in names
    assert any(n.startswith("prunewise.models.") for n in names)
    assert edges()["prunewise.unstructured.fvw"].get("prunewise.plan"), "fvw imports plan: the graph missed it"


def test_cycle_finder_on_a_small_graph():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_reference_patterns():
    hits = lambda s: [w for w, p in REFERENCES if p.search(s)]  # noqa: E731
    assert hits("see " + "METHODS" + ".md section 2") == ["the spec"]
    assert hits("fixes " + "issue" + " 12") == ["an issue number"]
    assert hits("/work/" + "shared" + "/seeds") == ["the shared folder"]
    assert hits("shared with the baselines") == []
