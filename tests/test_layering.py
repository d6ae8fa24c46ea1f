"""The package's layers: no import cycles, no import that goes up, lazy imports only for optional dependencies.

Layers, bottom to top (a module may import from its own unit and from any unit in a lower layer, nothing else):

    base      _version, errors, validation, builtin (``builtin:`` ids)   pure Python, no torch
    io algos  io: files, checkpoints, images, atomic writes;  algos: adapter math + modules, one file per algorithm
    network   config, presets, inject, layer, network, the ``lyco`` package itself (public API)
    sd        Stable Diffusion pipelines, kohya naming, single files
    world     the micro-world: renderer, concepts, datasets, lyco-tiny, tiny backbones (uses sd to load its model)
    train eval tools      the trainer, the paper's evaluation, the file tools (never import each other)
    analysis kohya        study analysis (reads eval's results), the sd-scripts plug-in (uses train's optimiser code)
    sweep     runs grids of train + eval + analysis
    cli       lyco.cli, lyco.__main__, lyco.demo: the commands

The micro-world sits beside the library, not under it: io, algos, network and sd never import it, and it sees
only the library below it, so a study (train/eval/analysis/sweep) can use it and nothing in the library depends
on it.  See docs/ARCHITECTURE.md.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING``.  A function-level (lazy) import
is allowed only to defer a heavy optional dependency (diffusers, transformers, Pillow, ...): either that package
itself, or a lyco module that loads one the importing module does not.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

import lyco

SRC = Path(lyco.__file__).resolve().parent

UNITS: dict[str, tuple[str, ...]] = {
    "base": ("lyco._version", "lyco.errors", "lyco.validation", "lyco.builtin", "lyco.console"),
    "io": ("lyco.io",),
    "algos": ("lyco.algos",),
    "network": ("lyco", "lyco.config", "lyco.presets", "lyco.inject", "lyco.layer", "lyco.network"),
    "sd": ("lyco.sd",),
    "world": ("lyco.world",),
    "train": ("lyco.train",),
    "eval": ("lyco.eval",),
    "tools": ("lyco.tools",),
    "analysis": ("lyco.analysis",),
    "kohya": ("lyco.kohya",),
    "sweep": ("lyco.sweep",),
    "cli": ("lyco.cli", "lyco.__main__", "lyco.demo", "lyco.generate"),
}
LAYERS: tuple[tuple[str, ...], ...] = (
    ("base",), ("io", "algos"), ("network",), ("sd",), ("world",), ("train", "eval", "tools"),
    ("analysis", "kohya"), ("sweep",), ("cli",),
)
#: third-party packages that may be imported inside functions (heavy, or not installed without the extras)
OPTIONAL = ("diffusers", "transformers", "accelerate", "PIL", "matplotlib", "torch.utils.tensorboard", "tensorboard",
            "huggingface_hub", "open_clip", "bitsandbytes", "prodigyopt", "lion_pytorch", "catboost", "ray")
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module (lyco module, or the dotted name of a third-party / stdlib import)
    line: int
    lazy: bool       # inside a function
    typing: bool     # under ``if TYPE_CHECKING``


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("lyco",) + path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _lyco_target(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    # ``from pkg import sub`` imports the submodule when there is one
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name for a in node.names]


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, typing: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(module, child):
                    target = _lyco_target(t) if t.split(".")[0] == "lyco" else t
                    if target != module:
                        found.append(Import(module, target, child.lineno, lazy, typing))
            in_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            type_only = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            visit(child, lazy or in_function, typing or type_only)

    visit(tree, False, False)
    return found


IMPORTS = [imp for m in sorted(MODULES) for imp in _imports(m)]


def _is_lyco(name: str) -> bool:
    return name == "lyco" or name.startswith("lyco.")


def unit_of(module: str) -> str | None:
    best, best_len = None, -1
    for unit, prefixes in UNITS.items():
        for p in prefixes:
            matches = module == p if p == "lyco" else (module == p or module.startswith(p + "."))
            if matches and len(p) > best_len:
                best, best_len = unit, len(p)
    return best


def _optional(name: str) -> str | None:
    return next((o for o in OPTIONAL if name == o or name.startswith(o + ".")), None)


def _optional_closure() -> dict[str, frozenset[str]]:
    """The optional packages each lyco module loads when imported (module-level imports, transitively, including
    the ``__init__`` of every package on the way)."""
    direct: dict[str, set[str]] = defaultdict(set)
    deps: dict[str, set[str]] = defaultdict(set)
    for imp in IMPORTS:
        if imp.lazy or imp.typing:
            continue
        if _is_lyco(imp.target):
            parts = imp.target.split(".")
            deps[imp.source].update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif _optional(imp.target):
            direct[imp.source].add(_optional(imp.target))
    for m in MODULES:                                   # a submodule's package runs first
        parts = m.split(".")
        deps[m].update(".".join(parts[:i]) for i in range(1, len(parts)))
    closure: dict[str, frozenset[str]] = {}
    for m in MODULES:
        seen, todo, opts = {m}, [m], set()
        while todo:
            cur = todo.pop()
            opts |= direct[cur]
            for d in deps[cur] - seen:
                seen.add(d)
                todo.append(d)
        closure[m] = frozenset(opts)
    return closure


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(MODULES)))

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def _where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(SRC.parent)}:{imp.line}"


# ------------------------------------------------------------------------------------------------------- tests
def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if unit_of(m) is None)
    assert not unplaced, f"add these modules to UNITS/LAYERS in {Path(__file__).name}: {unplaced}"


def test_no_import_cycles():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if _is_lyco(imp.target) and imp.target in MODULES:
            edges[imp.source].add(imp.target)
    cycles = _cycles(edges)
    detail: list[str] = []
    for comp in cycles:
        members = set(comp)
        detail += sorted({f"  {_where(i)}: {i.source} -> {i.target}" for i in IMPORTS
                          if i.source in members and i.target in members})
    assert not cycles, "import cycles (module-level, lazy and TYPE_CHECKING imports all count):\n" + "\n".join(detail)


def test_no_import_goes_up_the_layers():
    bad = []
    for imp in IMPORTS:
        if not _is_lyco(imp.target):
            continue
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src is None or dst is None or src == dst:
            continue
        if LEVEL[dst] >= LEVEL[src]:
            how = "a layer above" if LEVEL[dst] > LEVEL[src] else "a sibling unit"
            bad.append(f"  {_where(imp)}: {imp.source} ({src}) imports {imp.target} ({dst}, {how})")
    assert not bad, "imports against the layering (see the module docstring):\n" + "\n".join(dict.fromkeys(bad))


def test_lazy_imports_only_defer_optional_dependencies():
    closure = _optional_closure()
    bad = []
    for imp in IMPORTS:
        if not imp.lazy:
            continue
        if _is_lyco(imp.target):
            if not closure[imp.target] - closure[imp.source]:
                bad.append(f"  {_where(imp)}: {imp.target} loads no optional package that {imp.source} does not "
                           "already load: import it at module level")
        elif not _optional(imp.target):
            bad.append(f"  {_where(imp)}: {imp.target} is not a heavy optional dependency: import it at module level "
                       "(or add it to OPTIONAL if it is one)")
    assert not bad, "function-level imports without a reason:\n" + "\n".join(dict.fromkeys(bad))


def test_architecture_doc_names_every_unit():
    doc = (SRC.parent.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [p for prefixes in UNITS.values() for p in prefixes if p != "lyco" and f"`{p.split('.')[-1]}" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md's layer table does not mention {missing}"


@pytest.mark.parametrize("unit", [u for u in UNITS if u not in ("analysis", "sweep")])
def test_units_exist(unit):
    """The table above names real modules (so it cannot silently go stale)."""
    assert any(unit_of(m) == unit for m in MODULES)


def test_the_checks_see_what_they_must():
    """The scanner resolves relative, package and submodule imports and flags function-level ones."""
    seen = {(i.source, i.target, i.lazy) for i in IMPORTS}
    assert ("lyco.network", "lyco._version", False) in seen                 # from ._version import __version__
    assert ("lyco.sd", "lyco.sd.pipelines", False) in seen                  # from .pipelines import load_pipeline
    assert any(s == "lyco.sd.single_file" and t == "diffusers" and lazy for s, t, lazy in seen)
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert unit_of("lyco") == "network" and unit_of("lyco.io.atomic") == "io" and unit_of("lyco.demo") == "cli"
