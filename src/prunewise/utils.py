"""Small utilities shared by every layer (only the base layer's `dist` and `errors` from prunewise)."""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from .errors import PrunewiseError

#: The layers whose weights prunewise prunes, counts MACs of and resizes: conv and linear.
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def call(model: nn.Module, inputs):
    """``model`` on one batch of inputs: a tensor, a tuple of positional tensors, or a dict of
    keyword tensors (as a HuggingFace model takes ``input_ids`` / ``attention_mask``)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def forward(model: nn.Module, inputs) -> torch.Tensor:
    """``model``'s logits on one batch of inputs (:func:`call`, then :func:`logits`)."""
    return logits(call(model, inputs))


def logits(out):
    """The logits in a model's output: the tensor itself, the ``logits`` of a HuggingFace
    ``ModelOutput`` or of a dict, else the first tensor of a tuple or list."""
    if isinstance(out, torch.Tensor):
        return out
    got = getattr(out, "logits", None)
    if got is None and isinstance(out, dict):
        got = out.get("logits")
    if got is None and isinstance(out, (tuple, list)) and out:
        got = out[0]
    if not isinstance(got, torch.Tensor):
        raise PrunewiseError(f"the model's output ({type(out).__name__}) holds no logits tensor: "
                             f"return a tensor, a tuple starting with one, or an object or dict "
                             f"with 'logits'")
    return got


def batch_size(inputs) -> int:
    """The number of samples in a batch of inputs (tensor, tuple or dict of tensors)."""
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    elif isinstance(inputs, (tuple, list)):
        inputs = inputs[0]
    return len(inputs)


def take(inputs, index):
    """Rows ``index`` (a slice, bool mask or indices) of every tensor of a batch of inputs."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(v[index] for v in inputs)
    return inputs[index]


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
           "uint8": torch.uint8, "bool": torch.bool}


def input_spec(example) -> dict:
    """The shape (without the batch) and dtype of an example input: ``{"": spec}`` for one
    tensor, ``{name: spec}`` for a dict of keyword inputs (what a checkpoint records)."""
    def one(t: torch.Tensor) -> dict:
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            raise PrunewiseError(f"example inputs of dtype {dtype} cannot be recorded")
        return {"shape": list(t.shape[1:]), "dtype": dtype}
    if isinstance(example, dict):
        return {k: one(v) for k, v in example.items()}
    if isinstance(example, torch.Tensor):
        return {"": one(example)}
    raise PrunewiseError("example inputs must be a tensor or a dict of tensors to be recorded")


def example_of(spec: dict, batch: int = 1):
    """A zero batch of inputs from :func:`input_spec`'s record."""
    def zeros(s):
        return torch.zeros((batch, *s["shape"]), dtype=_DTYPES[s["dtype"]])
    if set(spec) == {""}:
        return zeros(spec[""])
    return {k: zeros(v) for k, v in spec.items()}



@contextlib.contextmanager
def one_thread():
    """Small dense linear algebra (Gram, eigvalsh, greedy steps) is fastest, and far steadier on
    a shared CPU, with one intra-op thread; restore the caller's setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: Seconds between two progress lines when the output is not a terminal (a log file).
LOG_INTERVAL = 10.0


_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for logs)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        # no carriage returns, and no cursor moves (tqdm's nested bars move up and down)
        text = _ESCAPES.sub("", text.replace("\r", "")).strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr: redrawn in place on a terminal; elsewhere one plain line at most
    every :data:`LOG_INTERVAL` seconds (so ``prunewise demo > log`` shows the run moving).
    Off when not ``enabled`` and on every torchrun rank but 0."""
    import sys

    from tqdm.auto import tqdm

    from . import dist

    off = not enabled or not dist.is_main()
    if off or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, disable=off, leave=False,
                    dynamic_ncols=True)
    return tqdm(total=total, initial=initial, desc=desc, file=_Lines(sys.stderr), leave=False,
                mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL * 6, ncols=100, ascii=True)


def repeat_batch(inputs, n: int):
    """A batch of ``n`` copies of the first sample of ``inputs`` (a tensor, a tuple / list or a
    dict of them): what a latency at batch size ``n`` is measured on."""
    if isinstance(inputs, dict):
        return {k: repeat_batch(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(repeat_batch(v, n) for v in inputs)
    return inputs[:1].expand(n, *inputs.shape[1:]).contiguous()
