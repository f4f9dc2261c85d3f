"""Mutation testing of the Python layer: does a targeted test subset notice a small code change?

A dev tool, not part of the package. For each target module it makes AST-level mutants (an
operator swapped, a comparison moved across its boundary, a constant changed, a ``+=``
dropped, a condition negated, ``min`` ↔ ``max``, ``True`` ↔ ``False``), writes each into a
*temporary copy* of ``python/entk_fast`` (the working tree is never touched) and runs that
module's mapped tests against it with ``pytest -x -q`` and a timeout.

Each mutant is killed (a test failed or the mutant broke an import), survived (every test
passed: a gap, or an equivalent mutant), timed out, or unviable (did not compile). Tests run
in a child forked from a parent that has already imported torch / numpy / scipy / pytest,
which saves the seconds of start-up per mutant; the package itself is imported fresh in each
child, from the copy.

    python tools/mutate.py --list                      # targets and mutant counts
    python tools/mutate.py analysis/cliffs.py           # every mutant of one target
    python tools/mutate.py --sample 40 --seed 0         # 40 random mutants per target
    python tools/mutate.py --only linalg.py:17 --show   # print one mutant's change, don't run

Run it under ``nice -n 19`` on a shared machine. The report lists the survivors as
``path:line  original  →  mutant``; ``--json FILE`` writes one record per mutant.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "entk_fast"

# Target module (relative to python/entk_fast) -> the pytest arguments that should kill its
# mutants. Subsets are chosen to be fast (seconds) yet to exercise the module's numbers
# against independent references (brute-force eNTKs, numpy / scipy, closed forms).
TARGETS: dict[str, list[str]] = {
    "reductions.py": [
        "tests/ntk/test_problem.py::test_problem_reduction_objects_closed_form",
        "tests/ntk/test_problem.py::test_problem_reductions_match_brute_force",
    ],
    "ntk/problem.py": [
        "tests/ntk/test_errors.py",
        "tests/ntk/test_batch_checks.py::test_numpy_dtype_spellings",
        "tests/ntk/test_batch_checks.py::test_bad_dtype_names_the_accepted_values",
        "tests/ntk/test_cross.py::test_cross_kernel_rejects_mismatched_inputs",
        "tests/ntk/test_problem.py::test_problem_reductions_match_brute_force",
        "tests/ntk/test_problem.py::test_problem_reduction_objects_closed_form",
        "tests/ntk/test_problem.py::test_problem_metric_root_squares_to_the_metric",
        "tests/ntk/test_problem.py::test_problem_metric_tolerances_scale_with_dtype_and_size",
        "tests/ntk/test_problem.py::test_problem_keyword_inputs_and_partial_nan",
    ],
    "ntk/checks.py": [
        "tests/ntk/test_batch_checks.py",
        "tests/ntk/test_checks.py::test_checks_close_tolerance_and_nonfinite",
        "tests/ntk/test_checks.py::test_checks_finite_helpers_and_names",
    ],
    "ntk/assemble.py": [
        "tests/ntk/test_cross.py::test_tiled_cross_kernel_matches_reference",
        "tests/ntk/test_memory.py::test_sample_tiles_give_the_same_kernel",
        "tests/ntk/test_assemble.py::test_assemble_spans_and_units",
        "tests/ntk/test_assemble.py::test_assemble_square_is_the_gram",
        "tests/ntk/test_assemble.py::test_assemble_cross_is_the_cross_gram",
    ],
    "ntk/spectrum.py": [
        "tests/ntk/test_spectrum.py",
        "tests/ntk/test_spectrum_paths.py::test_spectrum_dual_matches_numpy",
        "tests/ntk/test_spectrum_paths.py::test_spectrum_dual_with_k_and_ridge",
        "tests/ntk/test_spectrum_paths.py::test_spectrum_dense_and_matrix_free_match_numpy",
        "tests/ntk/test_spectrum_paths.py::test_spectrum_auto_takes_dual_only_with_fewer_columns_than_rows",
    ],
    "linalg.py": [
        "tests/linalg/test_linalg.py",
        "tests/linalg/test_operator.py",
        "tests/linalg/test_overlap.py::test_linalg_overlap_of_a_vector_and_integer_range",
    ],
    "analysis/alignment.py": [
        "tests/analysis/test_analysis.py",
        "tests/analysis/test_cliffs_fourier.py",
        "tests/analysis/test_closed_forms.py::test_analysis_alignment_closed_form",
    ],
    "analysis/cliffs.py": [
        "tests/analysis/test_analysis.py",
        "tests/analysis/test_cliffs_fourier.py",
        "tests/analysis/test_closed_forms.py::test_analysis_feature_cliffs_closed_form",
    ],
    "analysis/fourier.py": [
        "tests/analysis/test_analysis.py",
        "tests/analysis/test_cliffs_fourier.py",
        "tests/analysis/test_closed_forms.py::test_analysis_fourier_rotation_of_a_two_column_block",
    ],
    "analysis/tms.py": [
        "tests/analysis/test_analysis.py",
        "tests/analysis/test_cliffs_fourier.py",
        "tests/analysis/test_closed_forms.py::test_analysis_tms_heatmap_closed_form",
    ],
}

_BINOP_SWAP: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Pow: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
_CMP_SWAP: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_CALL_SWAP = {
    "min": "max",
    "max": "min",
    "any": "all",
    "all": "any",
    "minimum": "maximum",
    "maximum": "minimum",
    "argmin": "argmax",
    "argmax": "argmin",
    "amin": "amax",
    "amax": "amin",
}
_OP_TEXT = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Pow: "**",
    ast.Mod: "%",
}
# Calls whose arguments only shape messages or logs.
_QUIET_CALLS = {"warn", "debug", "info", "warning", "error", "describe", "format_bytes"}
_QUIET_KEYWORDS = {"stacklevel", "desc", "unit"}


@dataclass
class Mutant:
    target: str
    index: int
    line: int
    kind: str
    before: str
    after: str
    key: tuple[str, int, int, int, int]
    op: str
    status: str = "pending"
    seconds: float = 0.0
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.target}:{self.index}"


def _key(node: ast.AST) -> tuple[str, int, int, int, int]:
    return (
        type(node).__name__,
        node.lineno,  # type: ignore[attr-defined]
        node.col_offset,  # type: ignore[attr-defined]
        node.end_lineno or 0,  # type: ignore[attr-defined]
        node.end_col_offset or 0,  # type: ignore[attr-defined]
    )


def _short(node: ast.AST, limit: int = 70) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    )


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _mutate(node: ast.AST, op: str) -> ast.AST:
    """The mutated copy of ``node`` (a statement may become ``pass``)."""
    node = copy.deepcopy(node)
    if op == "binop" and isinstance(node, ast.BinOp):
        node.op = _BINOP_SWAP[type(node.op)]()
    elif op == "aug-op" and isinstance(node, ast.AugAssign):
        node.op = _BINOP_SWAP[type(node.op)]()
    elif op == "aug-drop":
        return ast.Pass()
    elif op == "compare" and isinstance(node, ast.Compare):
        node.ops = [_CMP_SWAP[type(node.ops[0])]()]
    elif op == "const" and isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            node.value = not value
        elif isinstance(value, int):
            node.value = value + 1
        else:
            node.value = 1.0 if value == 0 else value * 2.0
    elif op == "boolop" and isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif op == "unary" and isinstance(node, ast.UnaryOp):
        return node.operand
    elif op == "negate" and isinstance(node, ast.If | ast.While | ast.IfExp):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif op == "call" and isinstance(node, ast.Call):
        swapped = _CALL_SWAP[_call_name(node)]
        if isinstance(node.func, ast.Name):
            node.func.id = swapped
        else:
            assert isinstance(node.func, ast.Attribute)
            node.func.attr = swapped
    else:  # pragma: no cover - a collector/mutator mismatch
        raise ValueError(f"cannot apply {op} to {type(node).__name__}")
    return node


class _Collector(ast.NodeVisitor):
    """Every mutation site of a module, in source order, outside messages and annotations."""

    def __init__(self) -> None:
        self.sites: list[tuple[ast.AST, str]] = []

    def generic_visit(self, node: ast.AST) -> None:
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if not isinstance(item, ast.AST):
                    continue
                # Docstrings: a string expression first in a body.
                if (
                    name == "body"
                    and i == 0
                    and isinstance(item, ast.Expr)
                    and _is_string(item.value)
                ):
                    continue
                self.visit(item)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:  # noqa: N802
        return

    def visit_Raise(self, node: ast.Raise) -> None:  # noqa: N802
        return

    def visit_Assert(self, node: ast.Assert) -> None:  # noqa: N802
        return

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        return

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        return

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg not in _QUIET_KEYWORDS:
            self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        name = _call_name(node)
        if name in _QUIET_CALLS:
            return
        if name in _CALL_SWAP:
            self.sites.append((node, "call"))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:  # noqa: N802
        if type(node.op) in _BINOP_SWAP and not (_is_string(node.left) or _is_string(node.right)):
            self.sites.append((node, "binop"))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:  # noqa: N802
        if type(node.op) in _BINOP_SWAP:
            self.sites.append((node, "aug-op"))
        self.sites.append((node, "aug-drop"))
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:  # noqa: N802
        if len(node.ops) == 1 and type(node.ops[0]) in _CMP_SWAP:
            self.sites.append((node, "compare"))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:  # noqa: N802
        if isinstance(node.value, bool | int | float) and not isinstance(node.value, complex):
            self.sites.append((node, "const"))

    def visit_BoolOp(self, node: ast.BoolOp) -> None:  # noqa: N802
        self.sites.append((node, "boolop"))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:  # noqa: N802
        if isinstance(node.op, ast.Not | ast.USub) and not (
            isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
        ):
            self.sites.append((node, "unary"))
        self.generic_visit(node)

    def _test(self, node: ast.If | ast.While | ast.IfExp) -> None:
        self.sites.append((node, "negate"))
        self.generic_visit(node)

    visit_If = visit_While = visit_IfExp = _test  # noqa: N815


class _Apply(ast.NodeTransformer):
    def __init__(self, key: tuple[str, int, int, int, int], op: str) -> None:
        self.key, self.op, self.done = key, op, False

    def visit(self, node: ast.AST) -> ast.AST:
        if not self.done and hasattr(node, "lineno") and _key(node) == self.key:
            self.done = True
            return _mutate(node, self.op)
        return super().visit(node)


def _describe(node: ast.AST, op: str) -> tuple[str, str]:
    """(before, after) as short source text; for a condition, just the test."""
    if op == "negate":
        test = node.test  # type: ignore[attr-defined]
        return f"if {_short(test)}", f"if not ({_short(test)})"
    if op == "aug-drop":
        return _short(node), "pass"
    return _short(node), _short(_mutate(node, op))


def collect(target: str) -> list[Mutant]:
    """The mutants of ``target`` (path relative to python/entk_fast), in source order."""
    tree = ast.parse((PACKAGE / target).read_text())
    collector = _Collector()
    collector.visit(tree)
    out = []
    for i, (node, op) in enumerate(sorted(collector.sites, key=lambda s: (_key(s[0])[1:3], s[1]))):
        before, after = _describe(node, op)
        out.append(
            Mutant(
                target=target,
                index=i,
                line=node.lineno,  # type: ignore[attr-defined]
                kind=op,
                before=before,
                after=after,
                key=_key(node),
                op=op,
            )
        )
    return out


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse((PACKAGE / mutant.target).read_text())
    applier = _Apply(mutant.key, mutant.op)
    tree = ast.fix_missing_locations(applier.visit(tree))
    if not applier.done:
        raise RuntimeError(f"{mutant.name}: site not found")
    return ast.unparse(tree)


# --- running -------------------------------------------------------------------------------


def _preload() -> None:
    """Import, in the parent, every third-party module the package and tests import, so each
    forked child only imports entk_fast itself (from the copy)."""
    probe = (
        "import sys, entk_fast, entk_fast.analysis, entk_fast.spectrum, entk_fast.linalg;"
        "import pytest, hypothesis, hypothesis.extra.numpy;"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    names = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    for name in names:
        # pytest plugins (hypothesis) must load under pytest, which rewrites their asserts.
        skip = name.startswith(("entk_fast", "_", "test", "hypothesis", "pytest", "pluggy"))
        if skip or name in sys.builtin_module_names:
            continue
        try:
            __import__(name)
        except Exception:  # noqa: S112 - a module that cannot preload just loads in the child
            continue
    import scipy.linalg  # noqa: F401
    import torch.func  # noqa: F401


def _run_child(copy_root: Path, args: list[str], log: Path) -> int:
    """In the forked child: run pytest on the copy; never returns."""
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(ROOT)
        import importlib

        import pytest

        importlib.invalidate_caches()
        import entk_fast

        if not Path(entk_fast.__file__).resolve().is_relative_to(copy_root):
            print(f"entk_fast imported from {entk_fast.__file__}, not the copy", flush=True)
            os._exit(99)
        code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *args])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 3)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        os._exit(3)


def run_tests(copy_root: Path, args: list[str], timeout: float, log: Path) -> tuple[int, float]:
    """(exit code or -1 on timeout, seconds) of the mapped tests on the copy, in a fork."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _run_child(copy_root, args, log)
    done = 0
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), time.monotonic() - start
            if time.monotonic() - start > timeout:
                break
            time.sleep(0.05)
    finally:  # a timeout, or the run stopped (Ctrl-C, SIGTERM): end this mutant's child
        if not done:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    return -1, time.monotonic() - start


def _status(code: int) -> str:
    if code == -1:
        return "timeout"
    if code == 0:
        return "survived"
    if code == 1:
        return "killed"
    if code == 5:
        return "no-tests"
    if code == 99:
        return "wrong-import"
    return "killed"  # collection / import errors, interrupted runs: the mutant broke something


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="modules under python/entk_fast (default all)")
    parser.add_argument("--list", action="store_true", help="count mutants per target and stop")
    parser.add_argument("--sample", type=int, help="at most this many random mutants per target")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--only", nargs="+", default=[], help="mutants by name, e.g. linalg.py:7")
    parser.add_argument("--show", action="store_true", help="print the mutants' changes only")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default 3× baseline)")
    parser.add_argument("--json", type=Path, help="write one JSON record per mutant here")
    parser.add_argument("--keep-logs", type=Path, help="keep each mutant's pytest output here")
    parser.add_argument(
        "--without-kills",
        action="store_true",
        help="leave out the tests written to kill mutants (the ones named NAME::test_...): "
        "score the module's own test files alone",
    )
    opts = parser.parse_args(argv)

    chosen: list[Mutant] = []
    targets = opts.targets or list(TARGETS)
    if opts.only:
        targets = sorted({name.rsplit(":", 1)[0] for name in opts.only})
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
        mutants = collect(target)
        if opts.list:
            kinds: dict[str, int] = {}
            for m in mutants:
                kinds[m.kind] = kinds.get(m.kind, 0) + 1
            print(f"{target:24} {len(mutants):4d}  {kinds}")
            continue
        if opts.only:
            mutants = [m for m in mutants if m.name in opts.only]
        elif opts.sample is not None and opts.sample < len(mutants):
            picked = random.Random(f"{opts.seed}:{target}").sample(mutants, opts.sample)
            mutants = sorted(picked, key=lambda m: m.index)
            for m in mutants:
                m.extra["sampled_from"] = str(len(collect(target)))
        chosen.extend(mutants)
    if opts.list:
        return 0
    if opts.show:
        for m in chosen:
            print(f"{m.name}  python/entk_fast/{m.target}:{m.line}  [{m.kind}]")
            print(f"    {m.before}\n →  {m.after}")
        return 0

    # SIGTERM (and SIGINT, which background shells ignore) stop the run with a report so far.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.setdefault("CI", "1")  # the derandomised hypothesis profile: reproducible kills
    sys.dont_write_bytecode = True
    work = Path(tempfile.mkdtemp(prefix="entk-mutate-"))
    copy_root = work / "src"
    shutil.copytree(PACKAGE, copy_root / "entk_fast", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(copy_root))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(copy_root), os.environ.get("PYTHONPATH", "")])
    logs = opts.keep_logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _preload()
    print(f"copy of the package: {copy_root / 'entk_fast'}", flush=True)

    records = []
    try:
        by_target: dict[str, list[Mutant]] = {}
        for m in chosen:
            by_target.setdefault(m.target, []).append(m)
        for target, mutants in by_target.items():
            args = [a for a in TARGETS[target] if not (opts.without_kills and "::" in a)]
            code, base = run_tests(copy_root, args, 1800, logs / f"{target.replace('/', '_')}.base")
            if code != 0:
                print(f"{target}: the unmutated tests fail (exit {code}); skipped", flush=True)
                for m in mutants:
                    m.status = "baseline-failed"
                records.extend(mutants)
                continue
            timeout = opts.timeout or max(3 * base, base + 20)
            print(f"{target}: {len(mutants)} mutants, baseline {base:.1f}s", flush=True)
            dest = copy_root / "entk_fast" / target
            original = dest.read_text()
            for m in mutants:
                try:
                    source = mutated_source(m)
                    compile(source, str(dest), "exec")
                except (SyntaxError, ValueError, RuntimeError) as exc:
                    m.status, m.detail = "unviable", str(exc)
                    records.append(m)
                    continue
                dest.write_text(source)
                try:
                    log = logs / f"{m.name.replace('/', '_').replace(':', '_')}.log"
                    code, m.seconds = run_tests(copy_root, args, timeout, log)
                finally:
                    dest.write_text(original)
                m.status = _status(code)
                if m.status == "killed":
                    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
                    failed = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
                    m.detail = (failed or lines[-1:] or [""])[0][:160]
                print(
                    f"  {m.status:9} {m.seconds:5.1f}s {m.name:28} line {m.line}: "
                    f"{m.before}  →  {m.after}",
                    flush=True,
                )
                records.append(m)
    except KeyboardInterrupt:
        print("stopped: reporting the mutants run so far", flush=True)
    finally:
        if opts.json:
            opts.json.write_text("".join(json.dumps(asdict(m)) + "\n" for m in records))
        shutil.rmtree(copy_root, ignore_errors=True)
        if opts.keep_logs:
            os.rmdir(work)  # empty now: the logs live in --keep-logs
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(records)
    return 0


def report(records: list[Mutant]) -> None:
    """Per-target counts, then every survivor and timeout with its place and change."""
    print("\ntarget                   mutants killed survived timeout unviable  score")
    for target in dict.fromkeys(m.target for m in records):
        ms = [m for m in records if m.target == target]
        count = {s: sum(m.status == s for m in ms) for s in ("killed", "survived", "timeout")}
        count["unviable"] = sum(m.status == "unviable" for m in ms)
        viable = count["killed"] + count["survived"] + count["timeout"]
        score = (count["killed"] + count["timeout"]) / viable if viable else float("nan")
        sampled = ms[0].extra.get("sampled_from")
        total = f"{len(ms)}/{sampled}" if sampled else str(len(ms))
        print(
            f"{target:24} {total:>7} {count['killed']:6d} {count['survived']:8d} "
            f"{count['timeout']:7d} {count['unviable']:8d}  {score:5.0%}"
        )
    rest = [m for m in records if m.status not in ("killed", "unviable")]
    if rest:
        print("\nnot killed:")
        for m in rest:
            print(f"  {m.status:9} python/entk_fast/{m.target}:{m.line} [{m.name}, {m.kind}]")
            print(f"      {m.before}  →  {m.after}")


if __name__ == "__main__":
    sys.exit(main())
