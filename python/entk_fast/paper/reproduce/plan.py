"""What a reproduction trains and the paper's numbers it is compared with: the sections, the
paper-size and reduced plans, and the run names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tasks.modadd import ModAddConfig
from ..tasks.tms import TMSConfig
from ..tasks.transformer import TransformerConfig
from .base import config_tag
from .lm import LMConfig

__all__ = ["BETAS", "PAPER", "SECTIONS", "TMS_SETTINGS", "Plan", "modadd_run_name", "tms_run_name"]

SECTIONS = ("tms", "modadd", "grokking", "transformer", "lm")
TMS_SETTINGS = ((10, 0.3), (10, 0.9), (40, 0.9))
BETAS = (0.0, 0.3, 1.0)

# The paper's numbers (arXiv 2510.00468), for the report's comparison columns.
PAPER: dict[str, Any] = {
    "tms_reconstructed": {"10-0.3": "≈ 10", "10-0.9": "≈ 21", "40-0.9": "≈ 42"},
    "tms_cliff": "largest gap right after index n = 50; for (10, 0.3) a second gap at the "
    "number of reconstructed features",
    "tms_beta03": "β = 0.3 on (10, 0.3): 50 distinct features, mean column max ≈ 0.99",
    "modadd_overlaps": {
        "2-57": {"a": "27.6", "b": "27.6", "a+b": "< 0.5", "a-b": "< 0.5"},
        "58-113": {"a": "< 0.5", "b": "< 0.5", "a+b": "26.1–26.5", "a-b": "24.6–25.2"},
    },
    "grokking": "derivative peaks near the onset of the test-accuracy jump (~ epoch 75–80)",
}


@dataclass(frozen=True)
class Plan:
    """What a reproduction trains: the paper's sizes (`paper`), a smoke test in under a
    minute (`quick`), or any configs (tests use other seeds and sizes). The first TMS
    config is the dense one (the paper's (10, 0.3)), whose extra checks apply."""

    tms: tuple[TMSConfig, ...]
    modadd: ModAddConfig
    transformer: TransformerConfig = TransformerConfig()
    lm: LMConfig = LMConfig()
    quick: bool = False

    @classmethod
    def paper(cls) -> Plan:
        return cls(
            tuple(TMSConfig(n_hidden=m, sparsity=s) for m, s in TMS_SETTINGS), ModAddConfig()
        )

    @classmethod
    def reduced(cls) -> Plan:
        tms = tuple(
            TMSConfig(n_hidden=m, sparsity=s, n_points=120, steps=1500) for m, s in TMS_SETTINGS
        )
        from .lm import QUICK as QUICK_LM
        from .transformer import QUICK

        return cls(tms, ModAddConfig(p=23, hidden=256, epochs=300), QUICK, QUICK_LM, quick=True)


def tms_run_name(config: TMSConfig) -> str:
    return f"tms-m{config.n_hidden}-s{config.sparsity:g}-{config_tag(config)}"


def modadd_run_name(config: ModAddConfig) -> str:
    return f"modadd-p{config.p}-{config_tag(config)}"
