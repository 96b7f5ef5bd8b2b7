"""Files: atomic writes, JSON, and safetensors with their headers checked before anything is
allocated. Checkpoint folders (a model's config and weights) are :mod:`prunewise.checkpoints`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import struct
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import dist, schema
from .errors import PrunewiseError

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
    """The write-then-rename of :func:`atomic_write`, in this process; a failed write (disk full,
    file too large, permissions, a read-only file system) is a PrunewiseError naming ``path``."""
    try:
        _write_then_rename(path, write)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _io_reason(str(e))
        kept = "left as it was" if os.path.lexists(path) else "not created"
        raise PrunewiseError(f"could not write {path}: {reason} ({kept})") from None


def _io_reason(message: str) -> str:
    """The OS's words in a safetensors I/O error ('... I/O error: File too large (os error 27)')."""
    reason = message.rsplit("I/O error:", 1)[-1].split("(os error", 1)[0].strip()
    return " ".join(reason.split())[:160]


def _write_then_rename(path: Path, write) -> None:
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
        os.chmod(tmp, 0o666 & ~_UMASK)  # a writer may have made its own file (safetensors: 0600)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON (:func:`dumps`), atomically."""
    text = dumps(obj, indent=2)

    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    atomic_write(path, w)


def dumps(obj, **kw) -> str:
    """``obj`` as strict JSON that any parser reads: tensors and numpy values as plain numbers
    (:func:`jsonable`), and a NaN or infinite number as ``null`` (Python's own ``NaN`` /
    ``Infinity`` tokens are not JSON)."""
    return json.dumps(finite(json.loads(json.dumps(obj, default=jsonable))), allow_nan=False,
                      **kw)


def finite(o):
    """``o`` (plain JSON types) with every non-finite float replaced by None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [finite(v) for v in o]
    return o


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


@contextlib.contextmanager
def reading(label: str):
    """Turn an OSError while reading (a device that fails on read, a file removed under us,
    permissions) into a PrunewiseError naming the file: ``label`` says what and where it is."""
    try:
        yield
    except OSError as e:
        raise PrunewiseError(f"cannot read {label}: {e.strerror or e}") from None


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
    with reading(f"{what} {path}"), open(path, "rb") as f:
        text = f.read(schema.MAX_JSON_BYTES + 1)
    obj = schema.parse_json(text, f"{what} {path}")
    if not isinstance(obj, dict):
        raise PrunewiseError(f"corrupt {what} {path}: expected a JSON object")
    if spec is not None:
        schema.check(obj, spec, str(path))
    return obj


def digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB pieces."""
    h = hashlib.sha256()
    with reading(str(path)), open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def check_digests(folder: Path, recorded: dict | None, names: list[str], index: str) -> None:
    """Refuse a folder whose files are not the ones its ``index`` file (written last) recorded.

    ``recorded`` is the index's ``{name: sha256}`` (None for folders saved before digests, which
    pass); ``names`` are the files this folder must bind, computed by the reader: a recorded name
    is never opened unless it is one of them. A digest that differs means the files come from
    different saves (a save killed between them, or a file replaced by hand)."""
    if recorded is None:
        return
    if sorted(recorded) != sorted(names):
        raise PrunewiseError(f"corrupt {folder / index}: its file digests name "
                             f"{schema.short(sorted(recorded))}, expected {schema.short(names)}")
    for name in names:
        path = folder / name
        if not path.is_file():
            raise PrunewiseError(f"{path} not found ({index} was written with it)")
        if digest(path) != recorded[name]:
            raise PrunewiseError(f"{path} is not the file {folder / index} was written with (its "
                                 f"SHA-256 differs): the two come from different saves, for "
                                 f"example a save interrupted between them; save again")


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save tensors to safetensors, atomically (copies break shared storage, as safetensors wants)."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta))


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse floating-point tensors holding NaN or infinite values (weights or data that would
    make every later number meaningless); one pass over each tensor, in place."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise PrunewiseError(f"{where}: tensor '{name}' holds {bad} NaN or infinite "
                                 f"value{'s' if bad > 1 else ''}")


def numel(shape) -> int:
    """Elements of ``shape`` (exact Python integers, no overflow)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _raw_header(path: Path, where: str) -> tuple[dict, int]:
    size = path.stat().st_size
    with reading(where), open(path, "rb") as f:
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
