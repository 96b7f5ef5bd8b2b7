"""Files: atomic writes, JSON, safetensors, and model checkpoints (a folder, never a pickle).

A checkpoint is a folder with ``config.json`` (architecture name, its arguments, the layer widths
and free-form metadata such as the data set it was trained on) and ``model.safetensors``.
Loading rebuilds the architecture from the zoo, resizes any layer whose saved tensors are
narrower (a structurally pruned model), and loads the tensors; nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import models
from .errors import PrunewiseError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = 1
_UMASK = os.umask(0o22)
os.umask(_UMASK)


def atomic_write(path: str | Path, write) -> None:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder,
    which is then renamed over ``path``; readers see the old file or the new one, never a half.

    ``write`` receives the temp file's path (a str) and must write the whole content there. The
    parent folder is created if needed; the file gets the usual permissions (0666 minus the
    umask). If ``write`` raises, the temp file is removed, ``path`` is left as it was and the
    exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=jsonable)
            f.write("\n")
    atomic_write(path, w)


def jsonable(o):
    """``default=`` hook for :func:`json.dumps`: tensors and numpy values become lists or numbers,
    paths become strings; anything else raises TypeError as :mod:`json` expects."""
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path, what: str = "file") -> dict:
    """Read a JSON object; a missing or corrupt file is a PrunewiseError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunewiseError(f"corrupt {what} {path}: {e}") from None
    if not isinstance(obj, dict):
        raise PrunewiseError(f"corrupt {what} {path}: expected a JSON object")
    return obj


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save tensors to safetensors, atomically (copies break shared storage, as safetensors wants)."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta))


def read_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt one is a PrunewiseError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunewiseError(f"corrupt {what} {path}: {e}") from None


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every conv / linear / norm layer: what a pruned architecture changes."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)
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
    write_tensors(folder / WEIGHTS, model.state_dict())
    write_json(folder / CONFIG, {"format": FORMAT, **cfg, "widths": layer_widths(model),
                                 "meta": meta or {}})
    return folder


def read_config(folder: str | Path) -> dict:
    """The ``config.json`` of a checkpoint folder, checked for the fields loading needs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunewiseError(f"checkpoint folder not found: {folder}")
    cfg = read_json(folder / CONFIG, "checkpoint config")
    for key in ("arch", "num_classes", "in_channels"):
        if key not in cfg:
            raise PrunewiseError(f"corrupt checkpoint config {folder / CONFIG}: missing '{key}'")
    return cfg


def load_model(folder: str | Path) -> nn.Module:
    """Rebuild a checkpoint's model (pruned widths included) without unpickling anything."""
    folder = Path(folder)
    cfg = read_config(folder)
    state = read_tensors(folder / WEIGHTS, "checkpoint weights")
    kwargs = {k: v for k, v in cfg.items() if k not in ("format", "arch", "widths", "meta")}
    model = models.create(cfg["arch"], **kwargs)
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
    return None


# Deprecated private names, kept only until the modules still using them switch to
# ``atomic_write`` / ``jsonable``; do not use them in new code.
_atomic = atomic_write
_jsonable = jsonable
