"""Every docstring example of the documented modules runs and prints what it shows, and every
public name there has one (the API reference is rendered from these docstrings)."""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect

import pytest

MODULES = [
    "entk_fast",
    "entk_fast.errors",
    "entk_fast.linalg",
    "entk_fast.results",
    "entk_fast.reductions",
    "entk_fast.plotting",
    "entk_fast.ntk.kernel",
    "entk_fast.ntk.spectrum",
    "entk_fast.ntk.estimate",
    "entk_fast.analysis.alignment",
    "entk_fast.analysis.cliffs",
    "entk_fast.analysis.fourier",
    "entk_fast.analysis.language",
    "entk_fast.analysis.tms",
    "entk_fast.analysis.transformer",
    "entk_fast.toys.modadd",
    "entk_fast.toys.tms",
    "entk_fast.toys.transformer",
    "entk_fast.paper",
    "entk_fast.paper.training",
    "entk_fast.paper.runs",
    "entk_fast.paper.tasks.modadd",
    "entk_fast.paper.tasks.registry",
    "entk_fast.paper.tasks.spec",
    "entk_fast.paper.tasks.tms",
    "entk_fast.paper.tasks.transformer",
]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: Examples that need an optional package: doctest name -> the package.
OPTIONAL = {
    "entk_fast.plotting": "matplotlib",
    "entk_fast.analysis.language.probe_ceiling": "sklearn",
}


def _attribute_docstrings(module) -> dict[str, str]:
    """Module-level ``NAME = ...`` followed by a string (the attribute docstrings griffe reads)."""
    body = ast.parse(inspect.getsource(module)).body
    out = {}
    for prev, node in zip(body, body[1:], strict=False):
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        if not isinstance(node.value.value, str):
            continue
        if isinstance(prev, ast.Assign):
            names = [t.id for t in prev.targets if isinstance(t, ast.Name)]
        elif isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name):
            names = [prev.target.id]
        else:
            names = []
        for name in names:
            out[name] = inspect.cleandoc(node.value.value)
    return out


def _doctests() -> list[doctest.DocTest]:
    tests = []
    parser = doctest.DocTestParser()
    for name in MODULES:
        module = importlib.import_module(name)
        tests += [t for t in doctest.DocTestFinder().find(module) if t.examples]
        for attr, doc in _attribute_docstrings(module).items():
            test = parser.get_doctest(doc, dict(module.__dict__), f"{name}.{attr}", None, 0)
            if test.examples:
                tests.append(test)
    return tests


@pytest.mark.parametrize("test", _doctests(), ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest) -> None:
    for prefix, package in OPTIONAL.items():
        if test.name.startswith(prefix) and importlib.util.find_spec(package) is None:
            pytest.skip(f"needs {package}")
    if test.name.startswith("entk_fast.plotting"):
        import matplotlib

        matplotlib.use("Agg")
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_public_names_have_examples(name: str) -> None:
    module = importlib.import_module(name)
    attributes = _attribute_docstrings(module)
    assigned = {
        target.id
        for node in ast.parse(inspect.getsource(module)).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    missing = []
    for public in getattr(module, "__all__", []):
        obj = getattr(module, public)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            if obj.__module__ != name:
                continue  # documented where it is defined
            doc = inspect.getdoc(obj) or ""
        elif public in assigned:
            doc = attributes.get(public, "")
        else:
            continue  # a module, or a re-exported constant
        if "Examples:" not in doc or ">>>" not in doc:
            missing.append(public)
    assert not missing, f"{name}: no Examples section with a doctest: {missing}"
