"""Any prepared data set: inputs and labels as tensors, in a ``.safetensors`` file or in memory.

A *raw* bundle's inputs go to the model as they are stored (no normalization, no augmentation,
their dtype kept): token ids, waveforms, features, or images already normalized. The inputs of a
split are one tensor (``N x ...``) or, for a model that takes several (a HuggingFace model's
``input_ids`` and ``attention_mask``), a dict of tensors that a batch passes as keywords.

File layout (``--data tensors --root FILE.safetensors``): ``train.x`` / ``train.y``,
``test.x`` / ``test.y`` and optionally ``val.x`` / ``val.y``; dict inputs as ``train.x.NAME``.
Targets are 1-D integer class labels in ``0..classes-1`` (stratified splits, ``num_classes``
counted), or any other tensor with one row per sample -- float regression targets, token ids of
a language model -- which the task (:mod:`prunewise.tasks`) scores and ``num_classes`` is 0;
without a ``val`` split, ``val_fraction`` of the training samples (seeded; stratified by class)
is held out. Every shape is checked from the header before
anything is read.

>>> bundle = data.from_tensors((x_train, y_train), (x_test, y_test), name="my-text")
>>> bundle = data.from_batches(train_loader, test_loader)   # any re-iterable of (x, y)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from prunewise import files
from prunewise.errors import PrunewiseError
from prunewise.utils import take

from .core import DataBundle, Split
from .splits import split_pool

#: The most samples a split of a tensors file may hold (the reader's bound).
MAX_SAMPLES = 10_000_000
SPLITS = ("train", "val", "test")


def _inputs_len(x, what: str) -> int:
    parts = x.values() if isinstance(x, dict) else [x]
    lens = set()
    for t in parts:
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise PrunewiseError(f"{what}: inputs must be tensors with a sample dimension")
        lens.add(int(t.shape[0]))
    files.check_finite(x if isinstance(x, dict) else {"x": x}, what)
    if len(lens) != 1:
        raise PrunewiseError(f"{what}: the input tensors hold different numbers of samples "
                             f"{sorted(lens)}")
    return lens.pop()


def _sample_shapes(x) -> tuple:
    """One sample's shape and dtype per input (``""`` for a single tensor)."""
    parts = x.items() if isinstance(x, dict) else [("", x)]
    return tuple(sorted((k, tuple(t.shape[1:]), str(t.dtype).replace("torch.", ""))
                        for k, t in parts))


def _show(shapes: tuple) -> str:
    return " ".join(f"{k + ' ' if k else ''}{list(s)} {d}" for k, s, d in shapes)


def is_labels(y: torch.Tensor) -> bool:
    """Whether targets are class labels: a 1-D integer tensor."""
    return y.dim() == 1 and not (y.dtype.is_floating_point or y.dtype.is_complex
                                 or y.dtype == torch.bool)


def _labels(y, n: int, what: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.dtype.is_complex \
            or y.dtype == torch.bool:
        raise PrunewiseError(f"{what}: targets must be a tensor with one row per sample: 1-D "
                             f"integer class labels, or float / token-id targets")
    if len(y) != n:
        raise PrunewiseError(f"{what}: {len(y)} targets for {n} samples")
    if not is_labels(y):
        files.check_finite({"y": y}, what)
        return y if y.dtype.is_floating_point else y.long()
    if n and int(y.min()) < 0:
        raise PrunewiseError(f"{what}: labels must be >= 0, got {int(y.min())}")
    return y.long()


def from_tensors(train, test, val=None, *, name: str = "tensors", num_classes: int | None = None,
                 val_fraction: float = 0.1, seed: int = 0) -> DataBundle:
    """A raw bundle from ``(inputs, labels)`` pairs (inputs: a tensor or a dict of tensors).
    Without ``val``, ``val_fraction`` of ``train`` is held out (seeded, stratified)."""
    pairs = {"train": train, "test": test, "val": val}
    splits = {}
    for s, pair in pairs.items():
        if pair is None:
            continue
        try:
            x, y = pair
        except (TypeError, ValueError):
            raise PrunewiseError(f"{name} {s}: give an (inputs, labels) pair") from None
        n = _inputs_len(x, f"{name} {s}")
        splits[s] = Split(x=x, y=_labels(y, n, f"{name} {s}"))
    kinds = {s: tuple(sorted(sp.x)) if isinstance(sp.x, dict) else None
             for s, sp in splits.items()}
    shapes = {s: (is_labels(sp.y), tuple(sp.y.shape[1:]), sp.y.dtype.is_floating_point)
              for s, sp in splits.items()}
    if len(set(shapes.values())) > 1:
        raise PrunewiseError(f"{name}: every split's targets must be of one kind and shape, got "
                             + ", ".join(f"{s}: {tuple(sp.y.shape)} {sp.y.dtype}"
                                         for s, sp in splits.items()))
    labels = is_labels(splits["train"].y)
    if len(set(kinds.values())) > 1:
        raise PrunewiseError(f"{name}: every split must hold the same inputs, got "
                             + ", ".join(f"{s}: {'one tensor' if k is None else list(k)}"
                                         for s, k in kinds.items()))
    if len(splits["train"]) == 0 or len(splits["test"]) == 0:
        raise PrunewiseError(f"{name}: the train and test splits must not be empty")
    if "val" in splits and len(splits["val"]) == 0:
        raise PrunewiseError(f"{name}: the val split is empty; give it samples, or leave it out "
                             f"and {val_fraction:g} of train is held out for validation")
    samples = {s: _sample_shapes(sp.x) for s, sp in splits.items()}
    if len(set(samples.values())) > 1:
        raise PrunewiseError(f"{name}: every split's samples must have one shape and dtype, got "
                             + ", ".join(f"{s}: {_show(v)}" for s, v in samples.items()))
    if "val" not in splits:
        strata = splits["train"].y.numpy() if labels else np.zeros(len(splits["train"]))
        keep, held = split_pool(strata, val_fraction, seed, name)
        whole = splits["train"]
        splits["train"], splits["val"] = (Split(x=take(whole.x, torch.from_numpy(p)),
                                                y=whole.y[torch.from_numpy(p)]) for p in (keep, held))
    top = max(int(sp.y.max()) for sp in splits.values() if len(sp)) + 1 if labels else 0
    classes = top if num_classes is None else int(num_classes)
    if classes < top:
        raise PrunewiseError(f"{name}: labels go up to {top - 1}, more than num_classes={classes}")
    x0 = splits["train"].x
    shape = next(iter(x0.values())).shape if isinstance(x0, dict) else x0.shape
    return DataBundle(name=name, train=splits["train"], val=splits["val"], test=splits["test"],
                      num_classes=classes, in_channels=int(shape[1]) if len(shape) > 2 else 1,
                      image_size=int(shape[-1]) if len(shape) > 1 else 1, mean=(), std=(),
                      augment={}, raw=True)


def from_batches(train: Iterable, test: Iterable, val: Iterable | None = None, **kw) -> DataBundle:
    """A raw bundle from re-iterables of ``(inputs, labels)`` batches (a DataLoader, a list),
    read once into memory; keywords as for :func:`from_tensors`."""
    def gather(batches, what):
        xs, ys = [], []
        for batch in batches:
            try:
                x, y = batch
            except (TypeError, ValueError):
                raise PrunewiseError(f"{what}: every batch must be a pair (inputs, labels)") from None
            xs.append(x)
            ys.append(torch.as_tensor(y))
        if not xs:
            raise PrunewiseError(f"{what}: no batches")
        if isinstance(xs[0], dict):
            return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}, torch.cat(ys)
        return torch.cat(xs), torch.cat(ys)

    return from_tensors(gather(train, "train"), gather(test, "test"),
                        None if val is None else gather(val, "val"), **kw)


def load_tensors(root, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
    """Read ``root`` (a ``.safetensors`` file laid out as the module says)."""
    if root is None:
        raise PrunewiseError("data set 'tensors' needs --root FILE.safetensors")
    path = Path(root)
    header, _ = files.read_header(path, "tensors data set")
    groups: dict[tuple[str, str], dict] = {}
    for key, entry in header.items():
        split, _, rest = key.partition(".")
        part, _, field = rest.partition(".")
        if split not in SPLITS or part not in ("x", "y") or (part == "y" and field):
            raise PrunewiseError(f"{path}: tensor '{key}' is not one of train/val/test .x[.NAME] "
                                 f"/ .y")
        if not entry["shape"] or entry["shape"][0] > MAX_SAMPLES:
            raise PrunewiseError(f"{path}: tensor '{key}' must hold at most {MAX_SAMPLES} samples "
                                 f"along its first dimension, got shape {entry['shape']}")
        groups.setdefault((split, part), {})[field] = entry
    for s in ("train", "test"):
        if (s, "x") not in groups or (s, "y") not in groups:
            raise PrunewiseError(f"{path}: needs {s}.x and {s}.y")
    if (("val", "x") in groups) != (("val", "y") in groups):
        raise PrunewiseError(f"{path}: val.x and val.y go together")
    for (split, part), fields in groups.items():
        if part == "x" and "" in fields and len(fields) > 1:
            raise PrunewiseError(f"{path}: {split}.x is either one tensor or named inputs "
                                 f"{split}.x.NAME, not both")
    tensors = files.read_tensors(path, "tensors data set")
    pairs = {}
    for s in SPLITS:
        if (s, "x") not in groups:
            continue
        fields = groups[(s, "x")]
        x = tensors[f"{s}.x"] if "" in fields else {f: tensors[f"{s}.x.{f}"] for f in fields}
        y = tensors[f"{s}.y"]
        if limit is not None and s == "train":
            x, y = take(x, slice(0, limit)), y[:limit]
        pairs[s] = (x, y)
    return from_tensors(pairs["train"], pairs["test"], pairs.get("val"), name="tensors",
                        val_fraction=val_fraction, seed=seed)

