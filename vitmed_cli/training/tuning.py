"""What a run trains (``tune``): every parameter (the study), a linear head on a frozen
backbone (``head``, a linear probe), or the last N blocks and the head (``last:N``).

Blocks are timm's own parameter groups (``group_matcher``: the stem, each block, the
head), so ``last:N`` means the same for a ViT, a ConvNeXt and a ResNet.  Frozen parts run in
eval mode even while the model trains, so a frozen backbone's batch norms and dropouts
behave as they do when its features are computed once (:mod:`.probe`).
"""

from __future__ import annotations

import types
from typing import Any

import torch

from ..choices import parse_tune
from ..errors import ConfigError


def classifier_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's final linear layer (timm's ``get_classifier``): what a linear probe trains."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"{type(model).__name__} has no linear classifier to train alone - use `tune` all"
        )
    return head


def _block_groups(model: torch.nn.Module) -> tuple[list[list[str]], set[str]]:
    """timm's fine parameter groups between the stem and the head, in depth order; the head's names."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"{type(model).__name__} names no blocks (timm group_matcher) - use `tune` all or head")
    groups = group_parameters(model, model.group_matcher(coarse=False))
    ordered = [names for _, names in sorted(groups.items())]
    head_ids = {id(p) for p in classifier_of(model).parameters()}
    params = dict(model.named_parameters())
    head = next((i for i, names in enumerate(ordered) if any(id(params[n]) in head_ids for n in names)),
                len(ordered))
    return ordered[1:head], {n for g in ordered[head:] for n in g}


def _frozen_train(model: torch.nn.Module, frozen: list[torch.nn.Module]):
    """``model.train`` that keeps the frozen modules in eval mode."""
    def train(self, mode: bool = True):
        torch.nn.Module.train(self, mode)
        for module in frozen:
            module.eval()
        return self

    return types.MethodType(train, model)


def apply_tuning(model: torch.nn.Module, tune: str) -> dict[str, Any]:
    """Freeze what ``tune`` leaves alone; returns the record stored with the run."""
    mode, n = parse_tune(tune)
    params = dict(model.named_parameters())
    if mode == "all":
        trainable = set(params)
    elif mode == "head":
        head_ids = {id(p) for p in classifier_of(model).parameters()}
        trainable = {k for k, p in params.items() if id(p) in head_ids}
    else:
        blocks, head = _block_groups(model)
        if n > len(blocks):
            raise ConfigError(f"`tune` last:{n} asks for more blocks than the model has ({len(blocks)}) - "
                              f"use last:{len(blocks)} or all")
        trainable = head | {name for g in blocks[len(blocks) - n:] for name in g}
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    if mode != "all":
        frozen = _frozen_modules(model)
        model.train = _frozen_train(model, frozen)
        model.train(model.training)
    n_train = sum(params[k].numel() for k in trainable)
    return {"tune": str(tune), "trainable_params": int(n_train),
            "frozen_params": int(sum(p.numel() for p in params.values()) - n_train)}


def _frozen_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The largest submodules whose parameters are all frozen (and that hold any)."""
    out: list[torch.nn.Module] = []
    taken: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        ps = list(module.parameters())
        if ps and not any(p.requires_grad for p in ps):
            out.append(module)
            taken.add(name)
    return out


__all__ = ["apply_tuning", "classifier_of"]
