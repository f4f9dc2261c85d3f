"""The package's imports (lazy ones included) run one way along the pipeline stages, without
cycles: leaves ← analysis (torch-free) ← results ← ntk ← plotting, toys ← paper ← batch ← cli; inside ``ntk/`` the same
holds along the engine's own order (layer rules → probe → request → plan → sources → kernel →
estimate → spectrum); and no module imports another module's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "entk_fast"

# Stage of each top-level part of the package; a module may import only its own or lower stages.
STAGES: dict[str, int] = {
    "errors": 0,
    "_validate": 0,
    "_io": 0,
    "_progress": 0,
    "_version": 0,
    "_resources": 0,
    "_openmp": 0,
    "_core": 0,
    "linalg": 0,
    "analysis": 1,  # eigenpairs -> numbers: numpy and linalg only
    "results": 2,
    "reductions": 2,
    "ntk": 3,
    "plotting": 4,
    "toys": 4,
    "paper": 5,
    "batch": 6,
    "cli": 7,
    "__main__": 7,
}

# Order inside ntk/ (the engine's pipeline): a module may import its own or lower stages only.
NTK_STAGES: dict[str, int] = {
    "checks": 0,
    "vmapping": 0,
    "params": 0,
    "readout_pruning": 0,
    "assemble": 0,
    "attention": 1,  # the attention recomputation with its projections exposed
    "layers": 1,  # the layer rules registry (Linear, Embedding; attention as a module rule)
    "probe": 2,
    "problem": 3,  # the request: parameters, reduction, inputs
    "plan": 4,  # the one planner
    "sources": 5,  # Jacobian sources: general | structured (attention is one of its rules)
    "kernel": 6,
    "layer_operator": 6,
    "operator": 6,
    "factored": 6,
    "krylov": 6,  # the top-k solve, wherever its products run
    "sharded": 6,  # products over Dask workers, each holding its samples' operator
    "estimate": 7,  # what each spectrum method would cost, the auto choice, entk_plan
    "spectrum": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom, known: set[str]) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = current.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in known else base)
    return targets


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every entk_fast module ``name`` imports at run time (function-level imports included;
    ``if TYPE_CHECKING:`` blocks, which never run, excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("entk_fast"))
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(name, path.name == "__init__.py", node, known)
            found.update(t for t in targets if t.startswith("entk_fast"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("entk_fast")
        ):
            found.add(str(node.args[0].value))
    return {t for t in found if t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules) | {"entk_fast._core"}  # the compiled extension
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _stage(module: str) -> tuple[int, int] | None:
    """(stage of the package part, stage inside ntk/); None for the package root."""
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root: the public face, re-exports every stage lazily
    if parts[1] != "ntk":
        inner = 0
    elif len(parts) == 2:  # ntk/__init__: the engine's public face, re-exports its last stage
        inner = max(NTK_STAGES.values())
    else:
        inner = NTK_STAGES[parts[2]]
    return STAGES[parts[1]], inner


def test_every_part_of_the_package_has_a_stage() -> None:
    tops = {name.split(".")[1] for name in _modules() if "." in name}
    assert tops <= set(STAGES), f"parts without a stage: {sorted(tops - set(STAGES))}"
    inner = {n.split(".")[2] for n in _modules() if n.startswith("entk_fast.ntk.")}
    assert inner <= set(NTK_STAGES), f"ntk modules without a stage: {inner - set(NTK_STAGES)}"


def test_imports_run_one_way_along_the_stages() -> None:
    wrong = []
    for module, targets in _graph().items():
        stage = _stage(module)
        if stage is None:
            continue
        for target in targets:
            target_stage = _stage(target)
            if target_stage is None:
                wrong.append(f"{module} -> {target} (the package root)")
            elif target_stage[0] > stage[0]:
                wrong.append(f"{module} (stage {stage}) -> {target} (stage {target_stage})")
            elif target_stage[0] == stage[0] == STAGES["ntk"] and target_stage[1] > stage[1]:
                wrong.append(
                    f"{module} (ntk stage {stage[1]}) -> {target} (ntk stage {target_stage[1]})"
                )
    assert not wrong, "imports against the stage order:\n" + "\n".join(sorted(wrong))


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..plotting import plot_spectrum\n", "against the stage order"),
        ("from ..paper.training import train\n", "against the stage order"),
        ("from .kernel import empirical_ntk\n", "ntk stage 4"),
    ],
)
def test_the_checker_catches_a_backward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
) -> None:
    """The check itself can fail: a lazy backward import planted in ntk/ is reported."""
    original = _imports

    def planted(name: str, path: Path, known: set[str]) -> set[str]:
        found = original(name, path, known)
        if name == "entk_fast.ntk.plan":
            fake = tmp_path / "plan.py"
            fake.write_text("def f():\n    " + source.replace("\n", "\n    "), encoding="utf-8")
            found |= original(name, fake, known)
        return found

    monkeypatch.setitem(globals(), "_imports", planted)
    with pytest.raises(AssertionError, match=expected):
        test_imports_run_one_way_along_the_stages()


def _private_imports(name: str, path: Path, known: set[str]) -> list[str]:
    """``from module import _name`` of an entk_fast module, and ``module._name`` on a module
    bound by an import (private modules such as ``_validate`` may be imported; their names are
    what the leading underscore keeps private: ``_core`` is linalg's alone)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(name, path.name == "__init__.py", node, known)
            for alias, target in zip(node.names, targets, strict=True):
                if not target.startswith("entk_fast"):
                    continue
                if target.endswith("." + alias.name):
                    bound.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{name}: from {target} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    modules = _modules()
    known = set(modules) | {"entk_fast._core"}
    found = [
        hit
        for name, path in modules.items()
        if name != "entk_fast.linalg"  # the one wrapper of the private extension
        for hit in _private_imports(name, path, known)
    ]
    assert not found, "private names used across modules:\n" + "\n".join(sorted(found))


def test_the_checker_catches_a_private_import(tmp_path: Path) -> None:
    modules = _modules()
    known = set(modules) | {"entk_fast._core"}
    fake = tmp_path / "kernel.py"
    fake.write_text("from .plan import _diagonal_width\nfrom . import plan\nplan._x\n")
    hits = _private_imports("entk_fast.ntk.kernel", fake, known)
    assert hits == [
        "entk_fast.ntk.kernel: from entk_fast.ntk.plan import _diagonal_width",
        "entk_fast.ntk.kernel: plan._x",
    ]
