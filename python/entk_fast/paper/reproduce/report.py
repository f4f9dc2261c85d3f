"""The reproduction's report: plain JSON values and the markdown page beside the paper's numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...analysis import (
    FAMILIES,
)
from .base import figure_links
from .plan import PAPER

__all__ = ["markdown", "plain"]


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Reproduction of *Feature Identification via the Empirical NTK* (arXiv 2510.00468)",
        "",
        f"entk-fast {report['entk_fast']}"
        + (" — **quick** (reduced sizes)" if report["quick"] else "")
        + f"; total {report['seconds']['all']:.0f} s.",
        "",
    ]
    sections = report["sections"]
    if "tms" in sections:
        lines += ["## Toy Models of Superposition", ""]
        lines += [
            "| (m, S) | reconstructed (paper) | β = 0 cliffs (index: ratio) | β = 0 distinct "
            "features in top n | β = 0.3 distinct / mean max | β = 1 top-8 best features |",
            "|---|---|---|---|---|---|",
        ]
        for name, numbers in sections["tms"].items():
            zero, mid, one = numbers["beta=0"], numbers["beta=0.3"], numbers["beta=1"]
            cliffs = ", ".join(f"{i}: {r:.3g}" for i, r in zero["cliffs"][:3])
            lines.append(
                f"| ({name.replace('-', ', ')}) | {numbers['n_reconstructed']} "
                f"({PAPER['tms_reconstructed'].get(name, '')}) | {cliffs} | "
                f"{zero['distinct_features_top_n']} | {mid['distinct_features_top_n']} / "
                f"{mid['mean_column_max']:.3f} | {one['best_feature_top8']} |"
            )
        lines += ["", f"Paper: {PAPER['tms_cliff']}. {PAPER['tms_beta03']}.", ""]
        lines += figure_links(report, "tms_")
    if "modadd" in sections:
        m = sections["modadd"]
        lines += [f"## Modular addition (p = {m['p']})", ""]
        lines += [
            f"Largest cliffs (index: ratio): {', '.join(f'{i}: {r:.3g}' for i, r in m['cliffs'])}.",
            "",
        ]
        lines += ["| block | family | ours | paper |", "|---|---|---|---|"]
        for block, fams in m["overlaps"].items():
            paper = PAPER["modadd_overlaps"].get(block, {})
            for fam in FAMILIES:
                lines.append(
                    f"| {block} | {fam} | {fams[fam]:.2f} / {m['p'] - 1} | {paper.get(fam, '')} |"
                )
        lines += [
            "",
            "After the two-stage smoothness rotation, the weakest frequency's best atom:",
            "",
        ]
        lines += [
            f"- {fam}: {v['min_best_after']:.3f} (before: {min(v['best_before']):.3f})"
            for fam, v in m["rotation"].items()
        ]
        lines += ["", "Layer kernels:", ""]
        for name, layer in m["layers"].items():
            cliffs = ", ".join(f"{i}: {r:.3g}" for i, r in layer["cliffs"])
            ranks = ", ".join(f"{i}" for i, _ in layer["rank_cliffs"]) or "none"
            lines.append(
                f"- {name}: cliffs {cliffs}; rank {layer['rank']} (rank cliffs after: {ranks}); "
                f"block 2–{2 * (m['p'] - 1) + 1} vs a ∪ b {layer['block_2_vs_a_union_b']:.2f}, "
                f"vs a+b ∪ a−b {layer['block_2_vs_sum_union_diff']:.2f}"
            )
        lines += [""]
        lines += figure_links(report, "modadd_")
    if "grokking" in sections:
        g = sections["grokking"]
        lines += ["## Grokking diagnosis", ""]
        lines += [
            f"Onset (peak derivative of the a+b overlap of the second cliff block) at epoch "
            f"**{g['onset']}**; test accuracy first above 50% at epoch {g['test_acc_above_50']}, "
            f"above 95% at {g['test_acc_above_95']} ({g['n_checkpoints']} checkpoints, "
            f"{report['seconds']['grokking'].get('sweep', 0):.0f} s). Paper: {PAPER['grokking']}.",
            "",
        ]
        lines += figure_links(report, "grokking_")
    if "transformer" in sections:
        from .transformer import markdown

        lines += markdown(report)
    if "lm" in sections:
        from .lm import markdown as lm_markdown

        lines += lm_markdown(report)
    lines += ["## Checks", ""]
    for name, checks in report["checks"].items():
        for text, ok in checks.items():
            lines.append(f"- [{'x' if ok else ' '}] {name}: {text}")
    return "\n".join(lines) + "\n"
