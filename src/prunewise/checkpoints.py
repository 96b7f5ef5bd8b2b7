"""Checkpoint folders: a model as ``config.json`` + ``model.safetensors``, never a pickle.

``config.json`` holds the architecture name, its arguments, the layer widths and free-form
metadata (such as the data set the model was trained on). Loading rebuilds the architecture from
the zoo, checks the saved tensors against it, resizes any layer whose saved tensors are narrower
(a structurally pruned model), and loads the tensors; nothing is unpickled. Files are written
through :mod:`prunewise.files` (atomic, checked).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import files, models, schema
from .errors import PrunewiseError
from .utils import LAYER_TYPES

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = 1


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every conv / linear / norm layer: what a pruned architecture changes."""
    kinds = LAYER_TYPES + (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    return {n: list(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, kinds) and getattr(m, "weight", None) is not None}


def save_model(model: nn.Module, folder: str | Path, *, meta: dict | None = None) -> Path:
    """Save ``model`` (a zoo model, possibly pruned) as a checkpoint folder; returns the folder."""
    cfg = getattr(model, "prunewise_config", None)
    if not cfg or "arch" not in cfg:
        raise PrunewiseError("model has no prunewise_config: only models built by "
                             "prunewise.models.create can be saved as checkpoints")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PrunewiseError(f"checkpoint path exists and is not a folder: {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    files.write_tensors(folder / WEIGHTS, model.state_dict())
    files.write_json(folder / CONFIG, {"format": FORMAT, **cfg, "widths": layer_widths(model),
                                 "meta": meta or {}})
    return folder


def read_config(folder: str | Path) -> dict:
    """The ``config.json`` of a checkpoint folder, checked against :data:`schema.CONFIG` (types,
    ranges, known fields; ``meta`` and ``meta.data`` objects, ``meta.data.image_size`` bounded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunewiseError(f"checkpoint folder not found: {folder}")
    return files.read_json(folder / CONFIG, "checkpoint config", schema.CONFIG)


def _model_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("format", "arch", "widths", "meta")}


def dense_shapes(cfg: dict, where: str = "checkpoint") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of the dense model ``cfg`` describes, computed on
    the meta device (nothing allocated); refuses a model over ``schema.MAX_ELEMENTS`` elements."""
    try:
        with torch.device("meta"):
            dense = models.create(cfg["arch"], **_model_kwargs(cfg))
    except PrunewiseError as e:
        raise PrunewiseError(f"{where}: {e}") from None
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in dense.state_dict().items()}
    total = sum(files.numel(s) for s, _ in shapes.values())
    if total > schema.MAX_ELEMENTS:
        raise PrunewiseError(f"{where}: architecture '{cfg['arch']}' with these arguments has "
                             f"{total} elements, more than {schema.MAX_ELEMENTS}")
    return shapes


def _dtype_kind(name: str) -> str:
    return "bool" if name == "BOOL" else "float" if name.startswith(("F", "BF")) else "int"


def check_against(header: dict[str, dict], dense: dict, where: str, arch: str) -> None:
    """Refuse saved tensors the architecture cannot have: other names, another rank or kind of
    dtype, any dimension larger than the dense model's, or a zero where the dense one is not."""
    missing, extra = sorted(dense.keys() - header.keys()), sorted(header.keys() - dense.keys())
    if missing or extra:
        bits = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise PrunewiseError(f"{where} does not match architecture '{arch}': {'; '.join(bits)}")
    for name, entry in header.items():
        shape, dtype = dense[name]
        saved = tuple(entry["shape"])
        kind = "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "int"
        if (len(saved) != len(shape) or _dtype_kind(entry["dtype"]) != kind
                or any(s > d or (s == 0 and d > 0) for s, d in zip(saved, shape))):
            raise PrunewiseError(f"{where}: tensor '{name}' has shape {list(saved)} "
                                 f"({entry['dtype']}), which architecture '{arch}' cannot have "
                                 f"(dense shape {list(shape)}, {str(dtype).replace('torch.', '')})")


def load_model(folder: str | Path) -> nn.Module:
    """Rebuild a checkpoint's model (pruned widths included) without unpickling anything.

    Everything is checked before anything large is allocated: ``config.json`` against its schema,
    the safetensors header against the file, and the saved shapes against the dense architecture
    (built on the meta device) that the config names.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    where = f"checkpoint weights {folder / WEIGHTS}"
    header, _ = files.read_header(folder / WEIGHTS, "checkpoint weights")
    check_against(header, dense_shapes(cfg, f"checkpoint {folder}"), where, cfg["arch"])
    state = files.read_tensors(folder / WEIGHTS, "checkpoint weights")
    model = models.create(cfg["arch"], **_model_kwargs(cfg))
    fit_to_state(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PrunewiseError(f"checkpoint {folder} does not match architecture "
                             f"'{cfg['arch']}': {' '.join(first[:3])[:300]}") from None
    model.prunewise_config = {k: v for k, v in cfg.items() if k not in ("format", "widths", "meta")}
    model.prunewise_meta = cfg.get("meta", {})
    return model


def fit_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize conv / linear / norm layers in place to the shapes in ``state`` (pruned widths)."""
    for name, module in list(model.named_modules()):
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None or getattr(module, "weight", None) is None or w.shape == module.weight.shape:
            continue
        new = _resized(module, tuple(w.shape))
        if new is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _resized(m: nn.Module, shape: tuple[int, ...]) -> nn.Module | None:
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = m.groups > 1 and m.groups == m.in_channels and shape[1] == 1
        groups = shape[0] if depthwise else m.groups
        return type(m)(shape[1] * groups, shape[0], m.kernel_size, stride=m.stride,
                       padding=m.padding, dilation=m.dilation, groups=groups,
                       bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=m.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                       track_running_stats=m.track_running_stats)
    if isinstance(m, nn.GroupNorm) and shape[0] % m.num_groups == 0:
        return nn.GroupNorm(m.num_groups, shape[0], eps=m.eps, affine=m.affine)
    return None
