"""Training loops: configs, losses against formulas, learning, grokking, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.paper.tasks.modadd import ModAddConfig, first_step_above
from entk_fast.paper.tasks.registry import build_model, config_from_dict
from entk_fast.paper.tasks.tms import TMSConfig
from entk_fast.paper.training import train_modadd, train_tms


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def test_defaults_are_the_papers() -> None:
    t = TMSConfig()
    assert (t.n_features, t.n_points, t.importance_decay, t.lr, t.steps) == (
        50,
        500,
        0.8,
        1e-3,
        5000,
    )
    m = ModAddConfig()
    assert (m.p, m.hidden, m.train_fraction, m.lr, m.weight_decay, m.epochs) == (
        29,
        512,
        0.7,
        0.05,
        0.01,
        500,
    )
    assert m.checkpoint_every == 10


@pytest.mark.parametrize(
    ("cls", "fields", "error", "fragment"),
    [
        (ModAddConfig, {"p": 1}, InvalidArgumentError, "p must be an integer >= 2, got 1"),
        (ModAddConfig, {"p": 2.5}, InvalidTypeError, "p must be an integer"),
        (ModAddConfig, {"lr": -0.05}, InvalidArgumentError, r"lr must be in \(0, inf\)"),
        (ModAddConfig, {"lr": 0}, InvalidArgumentError, "lr"),
        (ModAddConfig, {"weight_decay": -1e-3}, InvalidArgumentError, "weight_decay"),
        (ModAddConfig, {"epochs": 0}, InvalidArgumentError, "epochs must be an integer >= 1"),
        (ModAddConfig, {"train_fraction": 1.0}, InvalidArgumentError, "train_fraction"),
        (ModAddConfig, {"checkpoint_every": 0}, InvalidArgumentError, "checkpoint_every"),
        (
            TMSConfig,
            {"sparsity": 1.0},
            InvalidArgumentError,
            r"sparsity must be in \[0, 1\), got 1.0",
        ),
        (TMSConfig, {"sparsity": -0.2}, InvalidArgumentError, "sparsity"),
        (TMSConfig, {"lr": -1e-3}, InvalidArgumentError, "lr"),
        (TMSConfig, {"n_hidden": 0}, InvalidArgumentError, "n_hidden"),
        (TMSConfig, {"seed": -1}, InvalidArgumentError, "seed"),
        (TMSConfig, {"steps": "10"}, InvalidTypeError, "steps must be an integer"),
        (TMSConfig, {"log_every": 0}, InvalidArgumentError, "log_every"),
    ],
)
def test_invalid_config_values(cls, fields, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        cls(**fields)


def test_configs_are_frozen_normalised_and_round_trip() -> None:
    cfg = TMSConfig(lr=1, sparsity=0)
    assert isinstance(cfg.lr, float) and isinstance(cfg.sparsity, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]
    assert dataclasses.replace(cfg, steps=7).steps == 7
    assert config_from_dict("tms", dataclasses.asdict(cfg)) == cfg
    with pytest.raises(InvalidArgumentError, match="unknown modadd config field"):
        config_from_dict("modadd", {"p": 7, "momentum": 0.9})


def test_tms_loss_is_importance_weighted_mse() -> None:
    cfg = TMSConfig(n_features=12, n_hidden=3, n_points=40, steps=1, sparsity=0.5)
    result = train_tms(cfg)
    model = build_model(cfg)  # the same initialisation as the run's step 0
    x, W, b = _np(cfg.dataset()), _np(model.W), _np(model.b)
    y = np.maximum(x @ W.T @ W + b, 0.0)
    imp = 0.8 ** np.arange(12)
    expected = np.mean(imp * (x - y) ** 2)
    assert result.history["step"].tolist() == [0, 1]
    assert result.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_short_tms_run_lowers_the_loss() -> None:
    result = train_tms(TMSConfig(n_hidden=5, steps=300, log_every=50))
    loss = result.history["loss"]
    assert result.history["step"].tolist() == [0, 50, 100, 150, 200, 250, 300]
    assert loss[-1] < 0.5 * loss[0]
    assert np.all(np.diff(loss) < 0)


def test_modadd_metrics_at_initialisation_match_formulas() -> None:
    cfg = ModAddConfig(p=7, hidden=16, epochs=1)
    result = train_modadd(cfg)
    data = cfg.dataset()
    model = build_model(cfg)
    W1, W2 = _np(model.W1.weight), _np(model.W2.weight)
    out = ((_np(data.inputs) @ W1.T / np.sqrt(14)) ** 2) @ W2.T / 16
    err = ((out - _np(data.targets)) ** 2).mean(axis=1)
    correct = out.argmax(axis=1) == data.labels.numpy()
    h = result.history
    for split, idx in (("train", data.train_idx.numpy()), ("test", data.test_idx.numpy())):
        assert h[f"{split}_loss"][0] == pytest.approx(err[idx].mean(), rel=1e-5)
        assert h[f"{split}_acc"][0] == pytest.approx(correct[idx].mean())


def test_modadd_p29_groks() -> None:
    """The paper's setting: memorisation first, generalisation ~epochs 70-130 later."""
    h = train_modadd(ModAddConfig()).history
    assert h["step"].tolist() == list(range(501))
    assert h["train_acc"][-1] == 1.0
    assert h["test_acc"][-1] >= 0.9
    memorised_only = (h["train_acc"] >= 0.99) & (h["test_acc"] <= 0.2)
    assert memorised_only.any()
    grok = first_step_above(h, "test_acc", 0.5)
    assert grok is not None and 60 <= grok <= 160
    assert h["step"][memorised_only][0] < grok


def test_training_is_deterministic_and_leaves_global_state_alone() -> None:
    cfg = ModAddConfig(p=11, hidden=32, epochs=20)
    torch.manual_seed(0)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = train_modadd(cfg)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    torch.rand(5)
    b = train_modadd(cfg)
    state_b = b.model.state_dict()
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, state_b[name]), name
    for k in a.history:
        assert np.array_equal(a.history[k], b.history[k])
    c = train_modadd(dataclasses.replace(cfg, seed=1))
    assert not torch.equal(a.model.W1.weight, c.model.W1.weight)


def test_seed_and_data_seed_are_independent() -> None:
    base = ModAddConfig(p=7, hidden=8, epochs=1)
    same_data = dataclasses.replace(base, seed=1)
    same_init = dataclasses.replace(base, data_seed=1)
    assert torch.equal(base.dataset().train_idx, same_data.dataset().train_idx)
    assert not torch.equal(base.dataset().train_idx, same_init.dataset().train_idx)
    assert torch.equal(build_model(base).W1.weight, build_model(same_init).W1.weight)
    assert not torch.equal(build_model(base).W1.weight, build_model(same_data).W1.weight)


def test_progress_callback_sees_every_step() -> None:
    calls: list[tuple[int, int]] = []
    train_tms(TMSConfig(steps=6, log_every=2), progress=lambda s, t, m: calls.append((s, t)))
    assert calls == [(s, 6) for s in range(7)]


def test_wrong_config_type_is_rejected() -> None:
    with pytest.raises(InvalidTypeError, match="TMSConfig"):
        train_tms(ModAddConfig())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="resume"):
        train_modadd(ModAddConfig(epochs=1), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hidden", "sparsity", "low", "high"), [(10, 0.3, 10, 10), (10, 0.9, 18, 24), (40, 0.9, 38, 46)]
)
def test_tms_reconstructs_the_papers_feature_counts(
    hidden: int, sparsity: float, low: int, high: int
) -> None:
    """arXiv 2510.00468 (TMS): about 10, 21 and 42 of 50 features reach (WᵀW)_ii >= 0.75 (seed 0: 10, 20, 40)."""
    result = train_tms(TMSConfig(n_hidden=hidden, sparsity=sparsity))
    assert low <= result.model.n_reconstructed() <= high


def test_paper_train_is_the_function_whatever_ran_first() -> None:
    """``entk_fast.paper.train`` is the training function even after the module that defines
    it has been imported (a module of the same name used to shadow it)."""
    import subprocess
    import sys

    code = (
        "import entk_fast.paper.training, entk_fast.paper as p, sys\n"
        "sys.exit(not callable(p.train) or p.train is entk_fast.paper.training)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
