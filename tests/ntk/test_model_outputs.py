"""Models as they come: keyword inputs (a dict), structured outputs picked by ``output_fn``
(as a Hugging Face model's ``ModelOutput``), against the brute-force reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from ntk_reference import reference_jacobian, reference_kernel, relative_error
from torch import nn

from entk_fast import InvalidArgumentError, InvalidTypeError, empirical_ntk, entk_spectrum


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class MaskedTokenModel(nn.Module):
    """input_ids (N, T) and attention_mask (N, T) keywords -> Output(logits (N, T, V), ...)."""

    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Output:
        h = torch.tanh(self.mix(self.emb(input_ids))) * attention_mask[..., None]
        context = h.cumsum(dim=1) / attention_mask.cumsum(dim=1).clamp_min(1)[..., None]
        return Output(logits=self.head(context), hidden=context)


class Wrapped(nn.Module):
    """The reference's view: positional inputs and the picked output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits[:, -1]


def _inputs(n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 7, (n, 4), generator=gen)
    mask = torch.ones(n, 4, dtype=torch.float64)
    mask[::2, -1] = 0.0  # some sequences are padded
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_keyword_inputs_and_output_fn_match_reference(reduction: str, structured: bool) -> None:
    torch.manual_seed(0)
    model = MaskedTokenModel().double().eval()
    x = _inputs(5, 1)
    jac = reference_jacobian(Wrapped(model), (x["input_ids"], x["attention_mask"]))
    result = empirical_ntk(
        model,
        x,
        reduction=reduction,
        output_fn=lambda o: o.logits[:, -1],
        structured=structured,
        layerwise=True,
        progress=False,
    )
    assert relative_error(result.kernel, reference_kernel(jac, reduction)) < 1e-10
    assert relative_error(sum(result.layer_kernels.values()), result.kernel) < 1e-12
    assert set(result.layer_kernels) == {"emb", "mix", "head"}


def test_cross_kernel_and_spectrum_with_keywords() -> None:
    torch.manual_seed(0)
    model = MaskedTokenModel().double().eval()
    x, x2 = _inputs(5, 1), _inputs(3, 2)
    pick = lambda o: o.logits[:, -1]  # noqa: E731
    j1 = reference_jacobian(Wrapped(model), (x["input_ids"], x["attention_mask"]))
    j2 = reference_jacobian(Wrapped(model), (x2["input_ids"], x2["attention_mask"]))
    cross = empirical_ntk(model, x, x2, reduction="trace", output_fn=pick, progress=False)
    expected = np.einsum("ncp,mcp->nm", j1, j2) / j1.shape[1]
    assert relative_error(cross.kernel, expected) < 1e-10
    spec = entk_spectrum(model, x, k=3, reduction="trace", output_fn=pick, method="dense")
    values = np.linalg.eigvalsh(reference_kernel(j1, "trace"))[::-1][:3]
    np.testing.assert_allclose(spec.eigenvalues, values, rtol=1e-9)


def test_clear_errors_for_outputs_and_keywords() -> None:
    model = MaskedTokenModel().double().eval()
    x = _inputs(3, 1)
    with pytest.raises(InvalidArgumentError, match=r"single tensor, got Output; pass output_fn"):
        empirical_ntk(model, x, progress=False)
    with pytest.raises(InvalidTypeError, match="output_fn must be a callable"):
        empirical_ntk(model, x, output_fn="logits", progress=False)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"forward \(with output_fn\) failed"):
        empirical_ntk(model, x, output_fn=lambda o: o.missing, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"inputs\['attention_mask'\] contains NaN"):
        empirical_ntk(
            model,
            {**x, "attention_mask": x["attention_mask"] * float("nan")},
            output_fn=lambda o: o.logits[:, -1],
            progress=False,
        )
    with pytest.raises(InvalidArgumentError, match="x2 must have the structure of inputs"):
        empirical_ntk(model, x, {"input_ids": x["input_ids"]}, output_fn=lambda o: o.logits[:, -1])
    with pytest.raises(InvalidArgumentError, match="empty dict"):
        empirical_ntk(model, {}, progress=False)


class DataDependent(nn.Module):
    """A forward torch.func.vmap refuses: Python control flow on a tensor value, ``.item()``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum().item() > 0:  # per sample: each sample takes its own branch
            h = torch.tanh(h)
        else:
            h = h * h
        return self.b(h)


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_a_forward_vmap_refuses_gets_its_exact_ntk_with_one_warning(reduction: str) -> None:
    torch.manual_seed(3)
    model = DataDependent().double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    expected = reference_kernel(reference_jacobian(model, (x,)), reduction)
    with pytest.warns(UserWarning, match="per-sample autograd") as caught:
        result = empirical_ntk(model, x, reduction=reduction, layerwise=True, progress=False)
    assert len([w for w in caught if "per-sample autograd" in str(w.message)]) == 1
    assert relative_error(result.kernel, expected) < 1e-10
    assert set(result.paths.values()) == {"general"}


def test_the_dual_spectrum_of_a_forward_vmap_refuses() -> None:
    torch.manual_seed(4)
    model = DataDependent().double().eval()  # 26 parameters < N·C = 60 rows: the dual path
    x = torch.randn(30, 3, dtype=torch.float64)
    expected = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    with pytest.warns(UserWarning, match="per-sample autograd"):
        spec = entk_spectrum(model, x, k=5, method="dual", progress=False)
    top = np.linalg.eigvalsh(expected)[::-1][:5]
    np.testing.assert_allclose(spec.eigenvalues, top, rtol=1e-8)
