"""Which parameters enter the kernel, and how they are partitioned into layer kernels.

A parameter is named by its canonical name (the first name ``named_parameters`` gives it;
tied parameters have further *aliases*). Users may also name a module path, meaning every
parameter under it. Frozen parameters (``requires_grad=False``) never enter the kernel.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError

__all__ = ["ParameterInfo", "ParameterIndex", "resolve_groups", "resolve_selection"]


@dataclass(frozen=True)
class ParameterInfo:
    """One distinct parameter tensor of the model."""

    name: str
    """Canonical name (first name in ``named_parameters``)."""
    owner: str
    """Path of the module that holds it (``""`` for the root module)."""
    shape: tuple[int, ...]
    numel: int
    trainable: bool
    aliases: tuple[str, ...]
    """Further names of the same tensor (tied parameters), possibly empty."""

    @property
    def default_group(self) -> str:
        """The owning module's path, or the parameter's own name when the root holds it."""
        return self.owner or self.name


class ParameterIndex:
    """Every parameter of a model, by canonical name, with name and module-path lookup."""

    def __init__(self, model: nn.Module) -> None:
        names_by_id: dict[int, list[str]] = {}
        tensors: dict[int, nn.Parameter] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            names_by_id.setdefault(id(param), []).append(name)
            tensors[id(param)] = param
        self.infos: dict[str, ParameterInfo] = {}
        self.canonical: dict[str, str] = {}
        for key, names in names_by_id.items():
            param = tensors[key]
            first = names[0]
            self.infos[first] = ParameterInfo(
                name=first,
                owner=first.rpartition(".")[0],
                shape=tuple(param.shape),
                numel=param.numel(),
                trainable=param.requires_grad,
                aliases=tuple(names[1:]),
            )
            for name in names:
                self.canonical[name] = first

    @property
    def trainable(self) -> list[str]:
        """Canonical names of the parameters with ``requires_grad=True``, in model order."""
        return [name for name, info in self.infos.items() if info.trainable]

    def expand(self, entry: object, *, argument: str) -> list[str]:
        """Canonical names of the trainable parameters that ``entry`` designates.

        ``entry`` is a parameter name (or alias), a module path, or a glob pattern over
        parameter names (``*``, ``?``, ``[...]``: ``"encoder.layer.*.output.dense.weight"``).
        Raises a clear error, with the closest names, when it names nothing, or only frozen
        parameters.
        """
        if not isinstance(entry, str):
            raise InvalidTypeError(
                f"{argument} must contain parameter names or module paths (str), "
                f"got {type(entry).__name__}"
            )
        if entry in self.canonical:
            found = [self.canonical[entry]]
        elif any(c in entry for c in "*?["):
            # a glob over parameter names: "encoder.layer.*.output.dense.weight"
            found = []
            for name in self.canonical:
                canon = self.canonical[name]
                if fnmatch.fnmatchcase(name, entry) and canon not in found:
                    found.append(canon)
        else:
            prefix = f"{entry}." if entry else ""
            found = []
            for name in self.canonical:
                canon = self.canonical[name]
                if name.startswith(prefix) and canon not in found:
                    found.append(canon)
        if not found:
            paths = {name.rpartition(".")[0] for name in self.canonical} - {""}
            close = difflib.get_close_matches(entry, [*self.canonical, *paths], n=4, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(map(repr, close))}?"
                if close
                else "parameters: "
                + ", ".join(list(self.canonical)[:12])
                + (" ..." if len(self.canonical) > 12 else "")
            )
            raise InvalidArgumentError(
                f"{argument}: {entry!r} is neither a parameter name, a module path nor a glob "
                f"pattern matching one of the model ({hint})"
            )
        trainable = [name for name in found if self.infos[name].trainable]
        if not trainable:
            raise InvalidArgumentError(
                f"{argument}: {entry!r} names only parameters with requires_grad=False "
                f"({', '.join(found)}); frozen parameters never enter the eNTK"
            )
        return trainable


def resolve_selection(index: ParameterIndex, params: Iterable[str] | str | None) -> list[str]:
    """Canonical names of the parameters the kernel contracts over, in model order.

    ``params=None`` selects every trainable parameter; otherwise each entry is a parameter
    name or a module path.
    """
    if params is None:
        selected = index.trainable
        if not selected:
            raise InvalidArgumentError(
                "the model has no trainable parameters (all have requires_grad=False), "
                "so its eNTK is zero"
            )
        return selected
    entries = [params] if isinstance(params, str) else params
    if not isinstance(entries, Iterable):
        raise InvalidTypeError(
            f"params must be a list of parameter names or module paths, got {type(params).__name__}"
        )
    chosen: set[str] = set()
    for entry in entries:
        chosen.update(index.expand(entry, argument="params"))
    if not chosen:
        raise InvalidArgumentError("params is empty: select at least one parameter")
    return [name for name in index.trainable if name in chosen]


def resolve_groups(
    index: ParameterIndex,
    selected: list[str],
    groups: Mapping[str, Iterable[str] | str] | None,
) -> dict[str, tuple[str, ...]]:
    """Partition of the selected parameters into named groups (the layer kernels).

    Default: one group per owning module path (a root-level parameter is its own group).
    A user mapping must name every selected parameter exactly once.
    """
    if groups is None:
        partition: dict[str, list[str]] = {}
        for name in selected:
            partition.setdefault(index.infos[name].default_group, []).append(name)
        return {key: tuple(names) for key, names in partition.items()}
    if not isinstance(groups, Mapping):
        raise InvalidTypeError(
            "groups must be a dict mapping a group name to a list of parameter names "
            f"or module paths, got {type(groups).__name__}"
        )
    if not groups:
        raise InvalidArgumentError("groups is empty: give at least one group")
    chosen = set(selected)
    owner: dict[str, str] = {}
    result: dict[str, tuple[str, ...]] = {}
    for key, entries in groups.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"group names must be non-empty strings, got {key!r}")
        entry_list = [entries] if isinstance(entries, str) else entries
        if not isinstance(entry_list, Iterable):
            raise InvalidTypeError(
                f"groups[{key!r}] must be a list of parameter names, got {type(entries).__name__}"
            )
        members: list[str] = []
        for entry in entry_list:
            for name in index.expand(entry, argument=f"groups[{key!r}]"):
                if name not in chosen:
                    raise InvalidArgumentError(
                        f"groups[{key!r}]: parameter {name!r} is not among the parameters the "
                        "kernel is computed for (see params=)"
                    )
                if name in owner and owner[name] != key:
                    raise InvalidArgumentError(
                        f"parameter {name!r} is in two groups ({owner[name]!r} and {key!r}); "
                        "groups must partition the parameters"
                    )
                if name not in members:
                    owner[name] = key
                    members.append(name)
        if not members:
            raise InvalidArgumentError(f"groups[{key!r}] is empty")
        result[key] = tuple(members)
    missing = [name for name in selected if name not in owner]
    if missing:
        raise InvalidArgumentError(
            f"groups must partition the parameters, but {missing} are in no group; add them "
            "to a group, or restrict the kernel to the grouped ones with params=[...]"
        )
    return result
