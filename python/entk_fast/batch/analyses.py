"""The analyses a batch can run (the registry): their names, the parameters that define
each one (recorded with its result and compared on resume) and what each computes from a
checkpoint's spectrum.

* ``spectrum``: the top-k eigenpairs (default k = 200, or the kernel's order when smaller)
  of the traced eNTK (modadd) or the flattened eNTK (other tasks), float64, on the run's
  whole data set; saved as an `NTKSpectrum` ``.npz`` next to the record.
* ``overlaps`` (modadd runs with odd p ≥ 3): the subspace overlaps Σ cos² of the cliff
  blocks of eigenvectors 2..2p−1 and 2p..4p−3 with the Fourier families a, b, a+b, a−b,
  and the cliff ratios λ_k / λ_{k+1} at k = 1, 2p − 1, 4p − 3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgumentError
from ..reductions import reduction_of

if TYPE_CHECKING:  # pragma: no cover
    from ..results import NTKSpectrum

__all__ = [
    "ANALYSES",
    "ANALYSIS_VERSION",
    "DEFAULT_K",
    "analysis_params",
    "kernel_order",
    "overlaps_summary",
    "parse_analyses",
    "spectrum_summary",
]

ANALYSES = ("spectrum", "overlaps")
DEFAULT_K = 200
#: Bumped when an analysis changes what it computes, so stored results are recomputed.
ANALYSIS_VERSION = 1


def parse_analyses(analyses: str | Iterable[str]) -> tuple[str, ...]:
    """``"spectrum,overlaps"`` or an iterable of names -> a tuple of known analyses."""
    names = analyses.split(",") if isinstance(analyses, str) else list(analyses)
    names = [n.strip() for n in names if isinstance(n, str) and n.strip()]
    if not names:
        raise InvalidArgumentError(f"analysis: expected one or more of {', '.join(ANALYSES)}")
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise InvalidArgumentError(
            f"analysis: unknown {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(ANALYSES)} (comma-separated)"
        )
    return tuple(dict.fromkeys(names))


def analysis_params(analysis: str, kind: str, config: Any, k: int) -> dict[str, Any] | None:
    """The parameters that define ``analysis`` of a run (recorded with its result and
    compared on resume), or None when it does not apply to this kind of run."""
    if analysis == "spectrum":
        return {
            "k": k,
            "reduction": "trace" if kind == "modadd" else "flattened",
            "dtype": "float64",
            "method": "auto",
            "seed": 0,
            "version": ANALYSIS_VERSION,
        }
    if analysis == "overlaps":
        p = getattr(config, "p", None)
        if kind != "modadd" or not isinstance(p, int) or p < 3 or p % 2 == 0:
            return None
        from ..analysis import FAMILIES

        return {
            "blocks": [[2, 2 * p - 1], [2 * p, 4 * p - 3]],
            "families": list(FAMILIES),
            "cliffs": [1, 2 * p - 1, 4 * p - 3],
            "reduction": "trace",
            "dtype": "float64",
            "seed": 0,
            "version": ANALYSIS_VERSION,
        }
    raise InvalidArgumentError(f"analysis: unknown {analysis!r}; choose from {ANALYSES}")


def kernel_order(model: Any, x: Any, reduction: str) -> int:
    """The order of the kernel of ``model`` on ``x`` under ``reduction``: the number of
    samples, times the outputs per sample when flattened."""
    import torch

    first = tuple(t[:1] for t in x) if isinstance(x, tuple) else x[:1]
    n = int((x[0] if isinstance(x, tuple) else x).shape[0])
    if not reduction_of(reduction).per_output:
        return n
    with torch.no_grad():
        out = model(*first) if isinstance(first, tuple) else model(first)
    return reduction_of(reduction).kernel_order(n, int(out[0].numel()))


def spectrum_summary(spec: NTKSpectrum, n: int) -> dict[str, Any]:
    """The scalar results of the ``spectrum`` analysis (``n``: the kernel's order)."""
    info = {
        key: value
        for key, value in spec.info.items()
        if isinstance(value, bool | int | float | str) and not isinstance(value, np.generic)
    }
    return {
        "k": len(spec),
        "order": n,
        "method": spec.method,
        "n_parameters": spec.n_parameters,
        "leading_eigenvalues": spec.eigenvalues[:8].tolist(),
        "gaps": [[index, ratio] for index, ratio in spec.gaps(5)],
        "info": info,
    }


def overlaps_summary(spec: NTKSpectrum, p: int, params: dict[str, Any]) -> dict[str, Any]:
    """The results of the ``overlaps`` analysis of a modadd run with modulus ``p``."""
    from ..analysis import block_overlaps

    blocks = [(int(a), int(b)) for a, b in params["blocks"]]
    families = tuple(params["families"])
    values = spec.eigenvalues
    if spec.eigenvectors.shape[1] < blocks[-1][1]:
        raise InvalidArgumentError(
            f"overlaps: need {blocks[-1][1]} eigenvectors, the spectrum has "
            f"{spec.eigenvectors.shape[1]}"
        )
    cliffs = {}
    for index in params["cliffs"]:
        if index < values.size:
            below = float(values[index])
            cliffs[str(index)] = float(values[index - 1]) / below if below > 0 else float("inf")
    return {
        "p": p,
        "dimension": p - 1,
        "blocks": block_overlaps(spec.eigenvectors, p, blocks, families),
        "cliff_ratios": cliffs,
    }
