"""The paper's toy models and their data sets (models and data only; training is in
`entk_fast.paper`).

* Toy Models of Superposition: `TMS`, `tms_dataset`, `tms_importance`.
* Modular addition with a 1-layer MLP: `ModAddMLP`, `modadd_dataset`.
* The 1-layer modular-addition transformer: `ModAddTransformer`, `modadd_tokens`.

All are plain ``torch.nn.Module`` s and tensors: the eNTK engine treats them like any user's model.
"""

from __future__ import annotations

from .modadd import ModAddData, ModAddMLP, modadd_dataset, modadd_onehot_targets
from .tms import TMS, tms_dataset, tms_importance
from .transformer import ModAddTokens, ModAddTransformer, modadd_tokens

__all__ = [
    "TMS",
    "ModAddData",
    "ModAddMLP",
    "ModAddTokens",
    "ModAddTransformer",
    "modadd_dataset",
    "modadd_onehot_targets",
    "modadd_tokens",
    "tms_dataset",
    "tms_importance",
]
