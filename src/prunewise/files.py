"""Files: atomic writes, JSON, safetensors, and model checkpoints (a folder, never a pickle).

A checkpoint is a folder with ``config.json`` (architecture name, its arguments, the layer widths
and free-form metadata such as the data set it was trained on) and ``model.safetensors``.
Loading rebuilds the architecture from the zoo, resizes any layer whose saved tensors are
narrower (a structurally pruned model), and loads the tensors; nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import dist, models, schema
from .errors import PrunewiseError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = 1
_UMASK = os.umask(0o22)
os.umask(_UMASK)


TMP_MARK = ".prunewise-tmp-"
_STARTED = time.time()  # temp files older than this cannot belong to a write of this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temp files that an interrupted :func:`atomic_write` left in ``folder``.

    Only regular files (never symlinks or folders) named ``.<name>.prunewise-tmp-<pid>-<random>``
    are removed, and only when they are older than this process and the process that made them
    is gone; returns what was removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(".") and TMP_MARK in e.name):
            continue
        pid = e.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        try:
            st = e.stat(follow_symlinks=False)
            if (not stat.S_ISREG(st.st_mode) or st.st_mtime >= _STARTED
                    or (pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def atomic_write(path: str | Path, write) -> None:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder,
    which is then renamed over ``path``; readers see the old file or the new one, never a half.

    ``write`` receives the temp file's path (a str) and must write the whole content there. The
    parent folder is created if needed; the file gets the usual permissions (0666 minus the
    umask). If ``write`` raises, the temp file is removed, ``path`` is left as it was and the
    exception propagates. The temp file is named ``.<name>.prunewise-tmp-<pid>-<random>``; stale
    ones left by a killed process are removed first (:func:`clean_stale_temps`). The temp file is
    created exclusively (never through a symlink) and must still be a regular file at the rename.

    Under ``torchrun`` only rank 0 writes; the other ranks wait until the file is in place and
    raise too if rank 0 failed (:func:`prunewise.dist.main_writes`).
    """
    dist.main_writes(lambda: _replace(Path(path), write))


def _replace(path: Path, write) -> None:
    """The write-then-rename of :func:`atomic_write`, in this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.close(fd)
        fd = -1
        write(tmp)
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise PrunewiseError(f"temporary file {tmp} was replaced by a non-file; not writing {path}")
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
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


def read_json(path: str | Path, what: str = "file", spec: dict | None = None) -> dict:
    """Read a JSON object (at most ``schema.MAX_JSON_BYTES``); a missing, corrupt or oversized
    file is a PrunewiseError naming it. With ``spec``, the object is checked by :func:`schema.check`."""
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > schema.MAX_JSON_BYTES:
        raise PrunewiseError(f"{what} {path} is too large ({size} bytes, at most "
                             f"{schema.MAX_JSON_BYTES})")
    with open(path, "rb") as f:
        obj = schema.parse_json(f.read(schema.MAX_JSON_BYTES + 1), f"{what} {path}")
    if not isinstance(obj, dict):
        raise PrunewiseError(f"corrupt {what} {path}: expected a JSON object")
    if spec is not None:
        schema.check(obj, spec, str(path))
    return obj


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save tensors to safetensors, atomically (copies break shared storage, as safetensors wants)."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta))


def numel(shape) -> int:
    """Elements of ``shape`` (exact Python integers, no overflow)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _raw_header(path: Path, where: str) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PrunewiseError(f"corrupt {where}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(schema.MAX_JSON_BYTES, size - 8):
            raise PrunewiseError(f"corrupt {where}: header length {n} exceeds the file "
                                 f"({size} bytes) or the limit")
        header = schema.parse_json(f.read(n), f"{where} header")
    if not isinstance(header, dict):
        raise PrunewiseError(f"corrupt {where}: the header is not a JSON object")
    if len(header) > schema.MAX_TENSORS + 1:
        raise PrunewiseError(f"corrupt {where}: {len(header)} tensors (at most {schema.MAX_TENSORS})")
    return header, size - 8 - n


def read_header(path: str | Path, what: str = "tensor file") -> tuple[dict[str, dict], dict]:
    """Read and check a safetensors header without loading any tensor.

    Returns ``({name: {"dtype", "shape", "data_offsets"}}, metadata)``. Every name, dtype, shape
    (rank <= ``schema.MAX_RANK``, each dimension <= ``schema.MAX_DIM``, zero-element shapes
    included) and byte range is checked: each tensor's bytes are exactly its elements times its
    dtype size, the ranges tile the data area with no gap or overlap and end at the end of the
    file, and all tensors together hold at most ``schema.MAX_ELEMENTS`` elements.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunewiseError(f"{what} not found: {path}")
    where = f"{what} {path}"
    header, data_bytes = _raw_header(path, where)
    meta = header.pop("__metadata__", {})
    schema.check(meta, schema.SAFETENSORS_METADATA, where, "__metadata__")
    spans, total = [], 0
    for name, entry in header.items():
        if not name or len(name) > schema.MAX_NAME:
            raise PrunewiseError(f"corrupt {where}: bad tensor name {schema.short(name)}")
        schema.check(entry, schema.SAFETENSORS_ENTRY, where, name)
        count = numel(entry["shape"])
        begin, end = entry["data_offsets"]
        if end - begin != count * schema.DTYPE_BYTES[entry["dtype"]]:
            raise PrunewiseError(f"corrupt {where}: tensor {name!r} of shape {entry['shape']} "
                                 f"({entry['dtype']}) has byte range {begin}..{end}")
        total += count
        spans.append((begin, end, name))
    if total > schema.MAX_ELEMENTS:
        raise PrunewiseError(f"{where}: {total} elements in all, more than {schema.MAX_ELEMENTS}")
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise PrunewiseError(f"corrupt {where}: tensor {name!r} starts at byte {begin}, "
                                 f"expected {at} (gap or overlap)")
        at = end
    if at != data_bytes:
        raise PrunewiseError(f"corrupt {where}: tensors hold {at} bytes but the file has "
                             f"{data_bytes} bytes of data")
    return header, meta


def read_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file after :func:`read_header` has checked it; a missing, corrupt or
    oversized one is a PrunewiseError naming it."""
    path = Path(path)
    read_header(path, what)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PrunewiseError(f"corrupt {what} {path}: {schema.short(str(e), 200)}") from None


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
    """The ``config.json`` of a checkpoint folder, checked against :data:`schema.CONFIG` (types,
    ranges, known fields; ``meta`` and ``meta.data`` objects, ``meta.data.image_size`` bounded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunewiseError(f"checkpoint folder not found: {folder}")
    return read_json(folder / CONFIG, "checkpoint config", schema.CONFIG)


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
    total = sum(numel(s) for s, _ in shapes.values())
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
    header, _ = read_header(folder / WEIGHTS, "checkpoint weights")
    check_against(header, dense_shapes(cfg, f"checkpoint {folder}"), where, cfg["arch"])
    state = read_tensors(folder / WEIGHTS, "checkpoint weights")
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
    return None


# Deprecated private names, kept only until the modules still using them switch to
# ``atomic_write`` / ``jsonable``; do not use them in new code.
_atomic = atomic_write
_jsonable = jsonable
