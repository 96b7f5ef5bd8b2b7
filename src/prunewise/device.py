"""Where the numbers are computed: one place that resolves and validates a device.

``--device`` on the command line and ``device=`` in the Python API take ``auto``, ``cpu``,
``cuda``, ``cuda:N`` or ``mps``. ``auto`` is CUDA when available (under ``torchrun``, the GPU
of this process's ``LOCAL_RANK``), else MPS, else CPU. Asking for a device that is not there is a
:class:`~prunewise.errors.PrunewiseError` (exit code 2), never a silent fallback.

Functions that receive a model compute on the model's own device (:func:`of`); the data moves
to it batch by batch (:func:`to`: pinned memory and ``non_blocking`` copies on CUDA, a no-op
on CPU, so CPU results are unchanged bit for bit).
"""
from __future__ import annotations

import contextlib
import os
import re

import torch
from torch import nn

from . import names
from .errors import PrunewiseError

CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
AMP = names.AMP
_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def mps_available() -> bool:
    """Whether Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` for ``spec`` (``None`` means ``auto``); PrunewiseError when the
    string is malformed or the device is not available here."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else spec
    if not isinstance(spec, str) or not _PATTERN.fullmatch(spec.strip().lower()):
        raise PrunewiseError(f"device must be one of {', '.join(CHOICES)}, got {spec!r}")
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return _cuda(None)
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise PrunewiseError("device 'mps' is not available (torch.backends.mps.is_available()"
                                 " is False); use --device cpu or auto")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise PrunewiseError(f"device {spec!r} is not available: this PyTorch "
                             f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}"
                             f"; use --device cpu or auto")
    return _cuda(int(spec.split(":")[1]) if ":" in spec else None)


def _cuda(index: int | None) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:  # one GPU per process under torchrun
        index = int(os.environ.get("LOCAL_RANK", "0")) % max(count, 1)
    if not 0 <= index < count:
        raise PrunewiseError(f"device cuda:{index} does not exist: {count} GPU(s) visible "
                             f"(cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to(t, dev: torch.device):
    """``t`` on ``dev``: the same tensor when it is there already; on CUDA through pinned
    memory with a non-blocking copy (the copy overlaps the previous step's kernels). A tuple
    or dict of tensors (a model's several inputs) moves element by element."""
    if isinstance(t, dict):
        return {k: to(v, dev) for k, v in t.items()}
    if isinstance(t, (tuple, list)):
        return type(t)(to(v, dev) for v in t)
    if not isinstance(t, torch.Tensor) or t.device == dev:
        return t
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def pair(x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(x, y)`` batch moved to ``dev`` (see :func:`to`)."""
    return to(x, dev), to(y, dev)


def synchronize(dev: torch.device) -> None:
    """Wait for the device's queued work (for wall-clock timing); nothing to wait for on CPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def check_amp(amp: str | None, dev: torch.device | None = None) -> None:
    """Raise PrunewiseError unless ``amp`` is None or one of :data:`AMP` on a CUDA device.

    Mixed precision is for training and fine-tuning on CUDA; on CPU or MPS it is an error
    rather than a silent no-op, so a run never claims a precision it did not use."""
    if amp is None:
        return
    if amp not in AMP:
        raise PrunewiseError(f"amp must be one of {', '.join(AMP)} (or none), got {amp!r}")
    if dev is not None and dev.type != "cuda":
        raise PrunewiseError(f"--amp {amp} needs a CUDA device; this run computes on {dev}")


def autocast(dev: torch.device, amp: str | None):
    """The forward-pass autocast context for ``amp`` (a null context without it)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(dev: torch.device, amp: str | None) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its gradients underflow without one); None otherwise."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(dev.type)
