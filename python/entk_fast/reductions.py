"""The reductions of the eNTK over outputs, as data: one `Reduction` object each in
`REDUCTIONS`, asked by everything that needs to know a kernel's layout (the engine, the result
types, the batch stores). Nothing else compares reduction names.

With R the output map (the metric S^½, and for ``mean_pairs`` the mean 1ᵀ/C folded in), every
reduction is K = scale · M Mᵀ for a Jacobian arrangement M: ``flattened`` and ``mean_pairs``
take each row of R J_n as a kernel row (scale 1); ``trace`` lays a sample's C rows side by side
in one kernel row (scale 1/C), so that (1/C) Σ_c ⟨J_n[c], J_n'[c]⟩ = (1/C) ⟨vec J_n, vec J_n'⟩
(J. Lin, arXiv 2510.00468, the eNTK and its traced and flattened forms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._validate import check_choice

__all__ = ["REDUCTIONS", "Reduction", "reduction_of"]


@dataclass(frozen=True)
class Reduction:
    """How the eNTK tensor K[n, n', c, c'] is reduced over outputs: K = scale · M Mᵀ.

    Attributes:
        name: ``"flattened"``, ``"trace"`` or ``"mean_pairs"`` (the ``reduction=`` argument).
        description: the kernel's shape and meaning, in words.

    Examples:
        >>> from entk_fast.reductions import REDUCTIONS
        >>> trace = REDUCTIONS["trace"]
        >>> trace.kernel_order(n_samples=5, n_outputs=3), trace.scale(3) == 1 / 3
        (5, True)
        >>> REDUCTIONS["flattened"].kernel_order(5, 3)
        15
    """

    name: str
    description: str
    rows_concatenated: bool
    """True: a sample's C_r Jacobian rows are laid side by side in one kernel row (``trace``);
    False: each row of R J_n is a kernel row."""
    mean_of_outputs: bool
    """True: the output map folds in the mean over outputs, 1ᵀ/C (one row a sample)."""

    @property
    def per_output(self) -> bool:
        """Whether the kernel has one row per (sample, output): row = n·C + c."""
        return not self.rows_concatenated and not self.mean_of_outputs

    def scale(self, n_outputs: int) -> float:
        """The factor in K = scale · M Mᵀ: 1/C for ``trace`` (the mean over outputs), else 1."""
        return 1.0 / n_outputs if self.rows_concatenated else 1.0

    def kernel_rows_per_sample(self, rows_per_sample: int) -> int:
        """Kernel rows of one sample, from the C_r rows of its reduced Jacobian R J_n."""
        return 1 if self.rows_concatenated else rows_per_sample

    def dual_columns(self, rows_per_sample: int, n_parameters: int) -> int:
        """Q, the columns of M (P, or C·P when a sample's rows are concatenated)."""
        return rows_per_sample * n_parameters if self.rows_concatenated else n_parameters

    def kernel_order(self, n_samples: int, n_outputs: int) -> int:
        """The kernel's order: N·C rows for a per-output kernel, N otherwise."""
        return n_samples * n_outputs if self.per_output else n_samples


REDUCTIONS: dict[str, Reduction] = {
    r.name: r
    for r in (
        Reduction("flattened", "(N·C, N·C), row = n·C + c", False, False),
        Reduction("trace", "(N, N), the mean over outputs of K[:, :, c, c]", True, False),
        Reduction("mean_pairs", "(N, N), the mean over all output pairs", False, True),
    )
}
"""Every reduction the engine offers, by name.

Examples:
    >>> from entk_fast.reductions import REDUCTIONS
    >>> sorted(REDUCTIONS)
    ['flattened', 'mean_pairs', 'trace']
"""


def reduction_of(name: Any) -> Reduction:
    """The `Reduction` called ``name``.

    Raises:
        InvalidArgumentError: ``name`` is not one of ``REDUCTIONS`` (the message lists them).

    Examples:
        >>> from entk_fast.reductions import reduction_of
        >>> reduction_of("mean_pairs").per_output
        False
    """
    return REDUCTIONS[check_choice("reduction", name, tuple(REDUCTIONS))]
