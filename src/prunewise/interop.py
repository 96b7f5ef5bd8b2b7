"""Bridges to the tools users already have: ``torch.nn.utils.prune`` and ONNX.

- :func:`to_torch_prune` turns a :class:`~prunewise.plan.MaskPlan` into the form
  ``torch.nn.utils.prune`` produces (``weight_orig`` parameter + ``weight_mask`` buffer +
  forward pre-hook), so ``prune.remove``, ``prune.is_pruned`` and the user's existing code work.
- :func:`from_torch_prune` reads that form (from any pruning the user did with
  ``torch.nn.utils.prune``) back into a MaskPlan.
- :func:`export_onnx` writes a pruned model (masked or surgically smaller) to ONNX.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from . import files
from .errors import PrunewiseError
from .plan import MaskPlan


def _split(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def to_torch_prune(model: nn.Module, plan: MaskPlan, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace=True``) pruned the
    ``torch.nn.utils.prune`` way with the plan's masks; ``prune.remove`` makes it permanent."""
    plan.check(model)
    out = model if inplace else clone(model)
    for name, mask in plan.masks.items():
        module_name, param = _split(name)
        module = out.get_submodule(module_name) if module_name else out
        if tprune.is_pruned(module) and hasattr(module, f"{param}_mask"):
            raise PrunewiseError(f"'{name}' is already pruned with torch.nn.utils.prune; "
                                 f"call prune.remove on it first")
        weight = getattr(module, param)
        tprune.custom_from_mask(module, param, mask.to(device=weight.device, dtype=weight.dtype))
    return out


def from_torch_prune(model: nn.Module, *, method: str = "torch.nn.utils.prune") -> MaskPlan:
    """The masks of every ``torch.nn.utils.prune``-pruned parameter of ``model`` as a MaskPlan.

    Names are the plain parameter names (``layer1.0.conv1.weight``), as ``prune.remove`` leaves them.
    """
    masks = {}
    for module_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if not buf_name.endswith("_mask") or not hasattr(module, buf_name[:-5] + "_orig"):
                continue
            param = buf_name[:-5]
            masks[f"{module_name}.{param}" if module_name else param] = buf.detach() != 0
    if not masks:
        raise PrunewiseError("model has no torch.nn.utils.prune masks (no '<name>_mask' buffer "
                             "next to a '<name>_orig' parameter)")
    return MaskPlan(masks, method=method, meta={"source": "torch.nn.utils.prune"})


def _pruning_hooks(model: nn.Module):
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, tprune.BasePruningMethod):
                yield module, hook


def clone(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on a model pruned with ``torch.nn.utils.prune``
    (whose computed ``weight`` attributes refuse to be deep-copied)."""
    stash = [(m, h._tensor_name, getattr(m, h._tensor_name)) for m, h in _pruning_hooks(model)]
    for m, name, _ in stash:
        delattr(m, name)
    try:
        out = copy.deepcopy(model)
    finally:
        for m, name, value in stash:
            setattr(m, name, value)
    for m, h in _pruning_hooks(out):
        setattr(m, h._tensor_name, h.apply_mask(m))
    return out


def export_onnx(model: nn.Module, path: str | Path, example_inputs: torch.Tensor, *,
                opset: int = 17) -> Path:
    """Export ``model`` (eval mode, on a copy) to ONNX with a dynamic batch dimension.

    Masked weights are exported as the zeros they are; a structurally pruned model exports its
    smaller layers. The file is written through a temp file and renamed (never half-written).
    """
    model = clone(model).eval()
    for module in model.modules():  # bake torch.nn.utils.prune masks into plain weights
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(module, hook._tensor_name)
    path = Path(path)

    def write(tmp):
        with warnings.catch_warnings():  # the TorchScript exporter needs no extra packages
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example_inputs,), tmp, input_names=["input"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False)
    files.atomic_write(path, write)
    return path
