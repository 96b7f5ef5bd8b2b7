"""``load``: one entry point that checks its arguments and dispatches to the readers."""

from __future__ import annotations

import os

import numpy as np

from prunewise import names
from prunewise.errors import PrunewiseError

from .cifar import load_cifar
from .core import DataBundle, check_limit
from .digits import load_digits
from .idx import IDX_SETS, load_idx
from .imagefolder import load_imagefolder
from .tensors import load_tensors
from .text import load_text, load_tokens

DATASETS = names.DATASETS


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    seq_len: int | None = None,
    tokenizer=None,
) -> DataBundle:
    """Load data set ``name`` (one of :data:`DATASETS`) into a :class:`DataBundle`.

    ``image_size`` defaults to 16 for digits and 32 otherwise (CIFAR is resized only when a
    different size is asked for).  ``val_fraction`` of the training pool becomes the validation
    split (seeded by ``seed``; stratified by class where the counts allow).  ``limit`` keeps only
    the first ``limit`` samples of the training pool (before the validation split is carved out),
    for quick runs (for imagefolder, whose files are listed class by class, the first ``limit`` of a
    fixed seed-0 shuffle, so several classes are kept); the test split is never limited.
    ``fashion-mnist`` / ``mnist`` have a fixed validation split instead (always seed 0,
    ``val_fraction`` ignored; ``limit`` truncates the training part after it is taken).
    ``text`` / ``tokens`` are cut into sequences of ``seq_len`` ids (default 128), ``text``
    tokenized with ``tokenizer`` (a HuggingFace tokenizer; None: bytes); see :mod:`.text`.
    """
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise PrunewiseError(f"data set {name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    name = name.strip().lower()
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1
    ):
        raise PrunewiseError(f"image_size={image_size!r} is invalid; it must be an integer >= 1")
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        vf = float("nan")
    if not 0.0 <= vf < 1.0:
        raise PrunewiseError(f"val_fraction={val_fraction!r} is invalid; it must be in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise PrunewiseError(f"seed={seed!r} is invalid; it must be an integer")
    check_limit(limit)
    if name == "digits":
        return load_digits(16 if image_size is None else int(image_size), vf, int(seed), limit)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, image_size, vf, int(seed), limit)
    if name in IDX_SETS:
        return load_idx(name, root, image_size, limit)
    if name == "tensors":
        return load_tensors(root, vf, int(seed), limit)
    if name == "text":
        return load_text(root, 128 if seq_len is None else seq_len, tokenizer)
    if name == "tokens":
        return load_tokens(root, 128 if seq_len is None else seq_len)
    return load_imagefolder(root, 32 if image_size is None else int(image_size), vf, int(seed), limit)

