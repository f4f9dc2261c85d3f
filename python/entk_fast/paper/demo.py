"""The demo: the paper's headline result end to end, in well under a minute (``entk-fast demo``).

Trains the modular-addition MLP (p = 29) until it groks, computes its traced eNTK on all p²
inputs (and the per-layer kernels), and shows that the spectrum has cliffs after eigenvalues
1, 57 and 113 whose eigenvectors span the Fourier families of a and b, then of a+b and a−b.
``--synthetic`` runs a torch-free check of the linear-algebra core on a planted Jacobian.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import linalg
from ..analysis.cliffs import spectral_cliffs
from ..analysis.fourier import FAMILIES, family_overlaps, family_values

__all__ = ["run_modadd_demo", "run_synthetic_demo"]


def _print_cliffs(values: np.ndarray, label: str) -> list[dict[str, float]]:
    cliffs = spectral_cliffs(values, top=3)
    print(f"  largest spectral cliffs of {label} (λ_k / λ_k+1):")
    for c in cliffs:
        print(
            f"    after k = {c.index:4d}: ratio {c.ratio:10.3g}  ({c.before:.4g} → {c.after:.4g})"
        )
    return [{"index": c.index, "ratio": c.ratio} for c in cliffs]


def run_modadd_demo(
    *, p: int = 29, epochs: int = 500, seed: int = 0, progress: bool | None = None
) -> dict[str, Any]:
    """Train, compute the eNTK, print the Fourier-feature overlaps; returns the summary."""
    from ..ntk import empirical_ntk
    from .tasks.modadd import ModAddConfig
    from .training import train_modadd

    family_values(p, "a")  # validates p (odd, ≥ 3) before any training
    config = ModAddConfig(p=p, epochs=epochs, seed=seed)
    print(f"[1/3] training the modular-addition MLP: p = {p}, H = {config.hidden}, {epochs} epochs")
    start = time.perf_counter()
    result = train_modadd(config, None, progress=progress)
    acc = _final_accuracies(result.history)
    print(f"      done in {time.perf_counter() - start:.1f} s; {acc}")

    data = config.dataset()
    print(f"[2/3] traced eNTK on all {p * p} inputs, per layer (float64)")
    start = time.perf_counter()
    ntk = empirical_ntk(
        result.model,
        data.inputs,
        reduction="trace",
        layerwise=True,
        dtype="float64",
        progress=progress,
    )
    seconds = time.perf_counter() - start
    print(
        f"      kernel {ntk.kernel.shape} in {seconds:.2f} s "
        f"(paths: {sorted(set(ntk.paths.values()))})"
    )

    print("[3/3] spectrum and Fourier features")
    values, vectors = linalg.eigh(ntk.kernel)
    cliffs = _print_cliffs(values, "K")
    fam = p - 1  # columns of one Fourier family; a cliff holds two families
    first, second = vectors[:, 1 : 1 + 2 * fam], vectors[:, 1 + 2 * fam : 1 + 4 * fam]
    overlaps: dict[str, dict[str, float]] = {}
    print(f"  subspace overlap (out of {fam}) of each Fourier family with the eigenvectors")
    head1, head2 = f"2–{1 + 2 * fam}", f"{2 + 2 * fam}–{1 + 4 * fam}"
    print(f"    {'family':8s} {'eigvecs ' + head1:>16s} {'eigvecs ' + head2:>18s}")
    in_first, in_second = family_overlaps(first, p), family_overlaps(second, p)
    for name in FAMILIES:
        o1, o2 = in_first[name], in_second[name]
        overlaps[name] = {"first_cliff": o1, "second_cliff": o2}
        print(f"    {name:8s} {o1:16.2f} {o2:18.2f}")
    layer_cliffs = {}
    for name, kernel in ntk.layer_kernels.items():
        layer_values = linalg.eigh(kernel)[0]
        layer_cliffs[name] = _print_cliffs(layer_values, f"the {name} layer kernel")
    return {
        "p": p,
        "epochs": epochs,
        "seed": seed,
        "accuracy": acc,
        "kernel_seconds": seconds,
        "cliffs": cliffs,
        "layer_cliffs": layer_cliffs,
        "overlaps": overlaps,
        "top_eigenvalues": values[: 4 * fam + 4].tolist(),
    }


def _final_accuracies(history: Any) -> str:
    try:
        row = history[-1] if isinstance(history, list) else {k: v[-1] for k, v in history.items()}
        return f"train acc {row['train_acc']:.0%}, test acc {row['test_acc']:.0%}"
    except (KeyError, IndexError, TypeError):
        return "accuracy unavailable"


def run_synthetic_demo(
    *, seed: int = 0, rows: int = 600, params: int = 2000, rank: int = 12
) -> dict[str, Any]:
    """Planted Jacobian J = A Bᵀ + noise: the Gram spectrum has a cliff at ``rank`` and its top
    eigenvectors span col(A). Torch-free; exercises gram, eigh, eigh_topk and the angles."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, rank))
    b = rng.standard_normal((params, rank)) * np.geomspace(3, 1, rank)
    j = a @ b.T + 0.5 * rng.standard_normal((rows, params))
    print(
        f"planted Jacobian J: {rows} rows × {params} parameters, {rank} feature directions + noise"
    )
    start = time.perf_counter()
    k = linalg.gram(j)
    t_gram = time.perf_counter() - start
    start = time.perf_counter()
    values, vectors = linalg.eigh(k)
    t_eigh = time.perf_counter() - start
    top_values, top_vectors = linalg.eigh_topk(k, rank)
    print(
        f"gram {t_gram * 1e3:.1f} ms, eigh {t_eigh * 1e3:.1f} ms "
        f"({linalg.get_num_threads()} threads)"
    )
    print("top eigenvalues:", np.array2string(values[: rank + 3], precision=4))
    cliffs = _print_cliffs(values, "J Jᵀ")
    angles = linalg.principal_angles(vectors[:, :rank], a)
    overlap = linalg.subspace_overlap(vectors[:, :rank], a)
    agree = float(np.max(np.abs(top_values - values[:rank]) / values[0]))
    print(
        "principal angles (deg) to the planted span: "
        f"{np.array2string(np.degrees(angles), precision=2)}"
    )
    print(f"subspace overlap {overlap:.4f} / {rank}; eigh_topk vs eigh: max rel diff {agree:.1e}")
    return {
        "rows": rows,
        "params": params,
        "rank": rank,
        "cliffs": cliffs,
        "overlap": overlap,
        "angles_deg": np.degrees(angles).tolist(),
        "topk_max_rel_diff": agree,
        "top_vectors_shape": list(top_vectors.shape),
    }
