"""Plans: what a pruning method decides, as plain data that saves, reloads and applies.

A structured plan (:class:`ChannelPlan`) is, per channel group (keyed by its root layer), the
sorted indices of the kept channels and the group's original size: ``plan.safetensors`` +
``plan.json``. :mod:`prunewise.surgery` makes and applies it.

An unstructured plan (:class:`MaskPlan`) is one boolean mask per pruned parameter, keyed by the
parameter's name in ``model.named_parameters()`` (True = keep). It is the same idea as
``torch.nn.utils.prune`` (``weight_mask``), kept outside the model so it can be saved, inspected
and applied to a fresh copy. Files: ``masks.safetensors`` (the masks) + ``plan.json`` (method,
settings, per-iteration history), both written atomically.

To move a plan to or from ``torch.nn.utils.prune`` form, use :mod:`prunewise.interop`
(``interop.to_torch_prune(model, plan)`` / ``interop.from_torch_prune(model)``); the dependency
goes one way, interop -> plan.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import files, schema
from .errors import PrunewiseError

MASKS_FILE = "masks.safetensors"
WEIGHTS_FILE = "weights.safetensors"   # a weight-updating method's weights (SparseGPT)
PLAN_FILE = "plan.json"
PLAN_FORMAT = 1
PLAN_TENSORS = "plan.safetensors"  # a channel plan's kept indices (its JSON is PLAN_FILE)
PLAN_JSON = PLAN_FILE


@dataclass
class MaskPlan:
    """Masks for unstructured pruning: ``masks[name]`` is a bool tensor shaped like the parameter.

    ``method`` names the scorer (a row of :mod:`prunewise.methods`); ``meta`` holds the
    settings and the per-iteration history (JSON-able). ``weights`` (None for most methods):
    the values a method that updates the weights it keeps (SparseGPT) gave the masked tensors;
    applying the plan writes them before masking, and they are saved with it
    (``weights.safetensors``).
    """

    masks: dict[str, torch.Tensor]
    method: str = "fvw"
    meta: dict = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.masks = {k: _as_bool(k, v) for k, v in self.masks.items()}
        if self.weights is not None:
            if set(self.weights) != set(self.masks) or any(
                    tuple(self.weights[k].shape) != tuple(m.shape) for k, m in self.masks.items()):
                raise PrunewiseError("a plan's weights must name the masked tensors, with their "
                                     "shapes")

    def __repr__(self) -> str:
        """One line (the masks themselves are millions of booleans)."""
        return (f"MaskPlan(method={self.method!r}, tensors={len(self.masks)}, "
                f"kept={self.kept:,} of {self.total:,}, sparsity={self.sparsity:.4f})")

    @property
    def total(self) -> int:
        """Number of weights the plan covers (the prunable weights)."""
        return int(sum(m.numel() for m in self.masks.values()))

    @property
    def kept(self) -> int:
        """Number of weights the plan keeps."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def sparsity(self) -> float:
        """Achieved fraction of pruned weights over the prunable weights."""
        total = self.total
        return 1.0 - self.kept / total if total else 0.0

    def per_layer(self) -> dict[str, float]:
        """Sparsity of every masked tensor."""
        return {k: 1.0 - float(m.sum()) / m.numel() for k, m in self.masks.items()}

    def check(self, model: nn.Module) -> None:
        """Raise PrunewiseError unless every mask names a parameter of ``model`` with its shape."""
        check_shapes(self.masks, dict(model.named_parameters()), "plan")

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with every masked weight set to exactly 0 (``model`` is untouched).

        Keep the weights at zero while training with ``prunewise.train.fit(..., masks=plan.masks)``.
        """
        self.check(model)
        out = copy.deepcopy(model)
        self.apply_(out)
        return out

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the masked weights of ``model`` in place (after writing the plan's
        ``weights``, when it has them); returns it."""
        self.check(model)
        if self.weights is not None:
            named = dict(model.named_parameters())
            for k, v in self.weights.items():
                named[k].copy_(v.to(named[k]))
        apply_masks(model, self.masks)
        return model

    def float_masks(self) -> dict[str, torch.Tensor]:
        """The masks as 0/1 float tensors (the form ``train.fit(masks=...)`` also accepts)."""
        return {k: m.float() for k, m in self.masks.items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``masks.safetensors`` and ``plan.json`` into ``folder`` (atomically); returns it."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise PrunewiseError(f"plan path exists and is not a folder: {folder}")
        files.write_tensors(folder / MASKS_FILE, self.masks)
        bound = [MASKS_FILE]
        if self.weights is not None:
            files.write_tensors(folder / WEIGHTS_FILE, self.weights)
            bound.append(WEIGHTS_FILE)
        elif (folder / WEIGHTS_FILE).exists():
            (folder / WEIGHTS_FILE).unlink()   # an older plan's, which this one replaces
        files.write_json(folder / PLAN_FILE, {
            "format": PLAN_FORMAT, "kind": "masks", "method": self.method,
            "sparsity": self.sparsity, "kept": self.kept, "total": self.total,
            "shapes": {k: list(m.shape) for k, m in self.masks.items()},
            "digests": {n: files.digest(folder / n) for n in bound}, "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, allow_all_pruned: bool = False) -> "MaskPlan":
        """Read a plan saved by :meth:`save`; missing or corrupt files raise PrunewiseError.

        ``plan.json`` is checked against :data:`schema.MASK_PLAN`, the tensor file's header against
        the file (and ``plan.json``'s shapes) before anything is loaded, and the masks by
        :func:`check_masks` (0/1 only; not every weight pruned unless ``allow_all_pruned``).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise PrunewiseError(f"plan folder not found: {folder}")
        info = files.read_json(folder / PLAN_FILE, "plan file")
        if info.get("kind") != "masks":
            raise PrunewiseError(f"corrupt plan file {folder / PLAN_FILE}: not a mask plan")
        schema.check(info, schema.MASK_PLAN, str(folder / PLAN_FILE))
        header, _ = files.read_header(folder / MASKS_FILE, "plan masks")
        shapes = info["shapes"]
        if set(shapes) != set(header):
            raise PrunewiseError(f"corrupt plan {folder}: {PLAN_FILE} and {MASKS_FILE} name "
                                 f"different tensors")
        for k, entry in header.items():
            if entry["shape"] != shapes[k] or entry["dtype"] not in ("BOOL", "U8"):
                raise PrunewiseError(f"corrupt plan {folder}: mask '{k}' is {entry['dtype']} of "
                                     f"shape {entry['shape']}, {PLAN_FILE} says a BOOL of {shapes[k]}")
        with_weights = WEIGHTS_FILE in (info.get("digests") or {})
        files.check_digests(folder, info.get("digests"),
                            [MASKS_FILE] + ([WEIGHTS_FILE] if with_weights else []), PLAN_FILE)
        masks = files.read_tensors(folder / MASKS_FILE, "plan masks")
        ordered = {k: masks[k] for k in shapes}
        check_masks(ordered, str(folder / MASKS_FILE), allow_all_pruned=allow_all_pruned)
        weights = _read_weights(folder / WEIGHTS_FILE, shapes) if with_weights else None
        return cls(ordered, method=info.get("method", "unknown"), meta=info.get("meta", {}),
                   weights=weights)


def _read_weights(path: Path, shapes: dict) -> dict[str, torch.Tensor]:
    """A plan's updated weights, checked against its masks' names and shapes, floating and
    finite."""
    header, _ = files.read_header(path, "plan weights")
    if set(header) != set(shapes) or any(header[k]["shape"] != shapes[k] for k in shapes) \
            or any(e["dtype"] not in ("F32", "F64", "F16", "BF16") for e in header.values()):
        raise PrunewiseError(f"corrupt plan weights {path}: they must be floating tensors with "
                             f"the masks' names and shapes")
    weights = files.read_tensors(path, "plan weights")
    files.check_finite(weights, f"plan weights {path}")
    return {k: weights[k] for k in shapes}


def check_shapes(masks: dict, params: dict, where: str) -> None:
    """The one check that masks fit a model: every mask names one of ``params`` (name ->
    parameter) and has its shape; a PrunewiseError naming ``where`` otherwise."""
    for name, m in masks.items():
        if name not in params:
            raise PrunewiseError(f"{where}: mask names unknown parameter '{name}', which the model "
                                 f"does not have (was it made for another architecture?)")
        if tuple(params[name].shape) != tuple(m.shape):
            raise PrunewiseError(f"{where}: mask for '{name}' has shape {tuple(m.shape)}, the "
                                 f"model's parameter has {tuple(params[name].shape)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Multiply every masked parameter of ``model`` by its 0/1 mask, in place (the one loop that
    applies masks to weights: plans and the pruning loop use it)."""
    named = dict(model.named_parameters())
    for n, m in masks.items():
        named[n].mul_(m.to(device=named[n].device, dtype=named[n].dtype))


def check_masks(masks: dict[str, torch.Tensor], where: str, *, allow_all_pruned: bool = False,
                model: nn.Module | None = None) -> None:
    """Raise a PrunewiseError naming ``where`` unless every mask holds only 0 and 1, masks at
    least one weight, keeps at least one weight overall (unless ``allow_all_pruned``), and, with
    ``model``, names one of its parameters with the parameter's shape.

    Use it on every mask set read from a file (a saved plan, a resume checkpoint).
    """
    kept = total = 0
    for name, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype.is_complex:
            raise PrunewiseError(f"{where}: mask '{name}' must be a real tensor")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise PrunewiseError(f"{where}: mask '{name}' must hold only 0 and 1")
        kept += int(torch.count_nonzero(m))
        total += m.numel()
    if total == 0:
        raise PrunewiseError(f"{where}: the masks cover no weight")
    if kept == 0 and not allow_all_pruned:
        raise PrunewiseError(f"{where}: every mask is all zero (sparsity 1.0); a plan must keep "
                             f"some weights")
    if model is not None:
        check_shapes(masks, dict(model.named_parameters()), where)


def _as_bool(name: str, m) -> torch.Tensor:
    m = torch.as_tensor(m)
    if m.dtype == torch.bool:
        return m.detach().cpu()
    if not bool(((m == 0) | (m == 1)).all()):
        raise PrunewiseError(f"mask '{name}' must hold only 0 and 1")
    return m.detach().cpu() != 0


@dataclass
class ChannelPlan:
    """Structured plan: per group (keyed by its root layer), channel count and kept indices."""
    keep: dict[str, torch.Tensor]           # group -> sorted LongTensor of kept channel indices
    sizes: dict[str, int]                   # group -> original channel count
    arch: str = ""                          # architecture signature (see :func:`signature`)
    meta: dict = field(default_factory=dict)
    spectra: dict = field(default_factory=dict, repr=False)  # group -> singular values (not saved)

    @property
    def counts(self) -> dict[str, int]:
        return {k: int(v.numel()) for k, v in self.keep.items()}

    def __repr__(self) -> str:
        kept, total = sum(self.counts.values()), sum(self.sizes.values())
        return (f"ChannelPlan(method={self.meta.get('method')!r}, groups={len(self.keep)}, "
                f"channels kept={kept:,} of {total:,})")

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        files.write_tensors(folder / PLAN_TENSORS, {k: v.to(torch.long) for k, v in self.keep.items()})
        files.write_json(folder / PLAN_JSON, {"format": PLAN_FORMAT, "kind": "channels",
                                             "arch": self.arch, "sizes": self.sizes,
                                             "counts": self.counts, "meta": self.meta,
                                             "digests": {PLAN_TENSORS: files.digest(
                                                 folder / PLAN_TENSORS)}})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ChannelPlan":
        """Read a plan saved by :meth:`save`. ``plan.json`` is checked against
        :data:`schema.CHANNEL_PLAN`, the tensor header against it before loading, and every
        group's kept indices by :func:`check_keep`; anything wrong is a PrunewiseError."""
        folder = Path(folder)
        cfg = files.read_json(folder / PLAN_JSON, "channel plan")
        if cfg.get("kind") != "channels" or "sizes" not in cfg:
            raise PrunewiseError(f"{folder / PLAN_JSON} is not a channel plan")
        schema.check(cfg, schema.CHANNEL_PLAN, str(folder / PLAN_JSON))
        sizes, where = cfg["sizes"], str(folder / PLAN_TENSORS)
        header, _ = files.read_header(folder / PLAN_TENSORS, "channel plan tensors")
        if set(header) != set(sizes):
            raise PrunewiseError(f"corrupt channel plan {folder}: groups in {PLAN_JSON} and "
                                 f"{PLAN_TENSORS} differ")
        counts = cfg.get("counts", {})
        for k, entry in header.items():
            n = entry["shape"][0] if len(entry["shape"]) == 1 else -1
            if n < 0 or entry["dtype"] not in ("I64", "I32") or n > sizes[k] \
                    or counts.get(k, n) != n:
                raise PrunewiseError(f"{where}: group '{k}' must be a list of at most {sizes[k]} "
                                     f"integer indices (as counts says), got {entry['dtype']} "
                                     f"of shape {entry['shape']}")
        files.check_digests(folder, cfg.get("digests"), [PLAN_TENSORS], PLAN_JSON)
        keep = files.read_tensors(folder / PLAN_TENSORS, "channel plan tensors")
        check_keep(keep, sizes, where)
        return cls(keep={k: v.to(torch.long) for k, v in keep.items()}, sizes=dict(sizes),
                   arch=cfg.get("arch", ""), meta=cfg.get("meta", {}))


def check_keep(keep: dict[str, torch.Tensor], sizes: dict[str, int], where: str) -> None:
    """Raise a PrunewiseError naming ``where`` unless every group's kept channels are a
    non-empty 1-D list of integers ``i`` with ``0 <= i < sizes[group]``, sorted and unique."""
    for k, v in keep.items():
        if k not in sizes:
            raise PrunewiseError(f"{where}: group '{k}' has no channel count")
        if v.dim() != 1 or v.numel() < 1 or v.dtype.is_floating_point or v.dtype == torch.bool:
            raise PrunewiseError(f"{where}: group '{k}' must keep a non-empty 1-D list of integer "
                                 f"channel indices, got {str(v.dtype).replace('torch.', '')} of "
                                 f"shape {list(v.shape)}")
        v = v.to(torch.long)
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi >= sizes[k]:
            raise PrunewiseError(f"{where}: group '{k}' keeps channel {lo if lo < 0 else hi}, "
                                 f"outside 0..{sizes[k] - 1}")
        if v.numel() > 1 and not bool((v[1:] > v[:-1]).all()):
            raise PrunewiseError(f"{where}: group '{k}' kept channels must be sorted and unique")
