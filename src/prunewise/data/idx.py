"""MNIST and Fashion-MNIST from their four IDX files (``fashion-mnist``, ``mnist``).

The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not.
Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist`` (Debian's package
``dataset-fashion-mnist``); MNIST has no default folder and needs ``root``.

* The 28x28 images are zero-padded by 2 to 32x32 (the default ``image_size``; any other size
  that is not an even margin away is reached by resizing).
* The validation split is fixed: ``n // 12`` images of the ``n`` training images, at most
  :data:`IDX_VAL_SIZE` (so the official 60,000 give 55,000 / 5,000), held out stratified by
  class and always with seed 0, whatever ``seed`` says; ``val_fraction`` is ignored.  Smaller
  (test or trimmed) sets keep the same one-in-twelve proportion, e.g. 120 images give
  110 / 10; below 12 images there is no validation split.
* The test split is the official test file (10,000 images); ``limit`` truncates the training
  part only, after the validation split is taken, so the validation split never changes.
* Normalization statistics come from the training split; horizontal flips are part of the
  augmentation for Fashion-MNIST only (digits are not mirror-symmetric).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from prunewise.errors import PrunewiseError

from .core import DataBundle, Split, channel_stats, resize_uint8
from .splits import make_split, split_pool

#: name -> (default folder or None, Debian package or None, class names)
IDX_SETS = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist",
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot")),
    "mnist": (None, None, tuple(str(i) for i in range(10))),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_VAL_SIZE = 5000  # fixed 55,000 / 5,000 train / validation split, always seed 0
IDX_VAL_SEED = 0
IDX_MAX_ITEMS = 10_000_000
IDX_MAX_SIDE = 4096
IDX_MAX_BYTES = 1 << 32  # payload bound: refuses absurd headers before reading anything
#: What the MNIST / Fashion-MNIST files really hold: 60,000 training and 10,000 test images of
#: 28 x 28 pixels; a header announcing more (a 3.7 MB gzip can announce 4.9 M images) is refused
#: before anything is read (sides up to 64 leave room for variants).
IDX_KNOWN_ITEMS = {"train": 60_000, "test": 10_000}
IDX_KNOWN_SIDE = 64
_CHUNK = 1 << 24


def idx_path(folder: str, stem: str) -> str | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists first, else None."""
    for cand in (stem, stem + ".gz"):
        path = os.path.join(folder, cand)
        if os.path.isfile(path):
            return path
    return None


def _read_dims(fh: BinaryIO, path: str, ndim: int, max_items: int = IDX_MAX_ITEMS,
               max_side: int = IDX_MAX_SIDE) -> list[int]:
    head = fh.read(4 + 4 * ndim)
    if len(head) < 4:
        raise PrunewiseError(f"{path}: file is too short to be an IDX file")
    if head[:3] == b"\x00\x00\x08" and head[3] != ndim:
        raise PrunewiseError(f"{path}: IDX file has {head[3]} dimension(s); expected {ndim} "
                             "(images have 3, labels 1)")
    if head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
        raise PrunewiseError(
            f"{path}: bad IDX magic {head[:4].hex()}; expected 000008{ndim:02x} (unsigned bytes, {ndim}-D)")
    if len(head) < 4 + 4 * ndim:
        raise PrunewiseError(f"{path}: IDX header is truncated")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if (dims[0] < 1 or dims[0] > max_items or any(d < 1 or d > max_side for d in dims[1:])
            or math.prod(dims) > IDX_MAX_BYTES):
        raise PrunewiseError(f"{path}: IDX dimensions {dims} are out of range (at most {max_items} items "
                             f"of sides 1..{max_side}, {IDX_MAX_BYTES} bytes in all)")
    return dims


def _read_payload(fh: BinaryIO, want: int) -> bytes:
    """Up to ``want + 1`` bytes, read in chunks so memory follows what the file really holds."""
    parts, have = [], 0
    while have <= want:
        part = fh.read(min(_CHUNK, want + 1 - have))
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)


def read_idx(path: str, ndim: int, max_items: int = IDX_MAX_ITEMS,
             max_side: int = IDX_MAX_SIDE) -> np.ndarray:
    """A uint8 IDX file (optionally gzipped) as an array, checked strictly.

    The magic number must say unsigned bytes with ``ndim`` dimensions, every dimension must be
    positive and bounded, and the payload must hold exactly the bytes the header announces.
    Every problem raises a one-line :class:`~prunewise.errors.PrunewiseError` naming ``path``.
    """
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            dims = _read_dims(fh, path, ndim, max_items, max_side)
            want = math.prod(dims)
            payload = _read_payload(fh, want)
    except PrunewiseError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise PrunewiseError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from None
    if len(payload) != want:
        what = "truncated" if len(payload) < want else "longer than its header says"
        raise PrunewiseError(f"{path}: IDX file is {what} (header announces {want} bytes of data)")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_idx_pair(name: str, folder: str, part: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    img_stem, lbl_stem = IDX_FILES[part]
    img_path, lbl_path = idx_path(folder, img_stem), idx_path(folder, lbl_stem)
    most = IDX_KNOWN_ITEMS[part]
    images = read_idx(img_path, 3, most, IDX_KNOWN_SIDE)
    labels = read_idx(lbl_path, 1, most, IDX_KNOWN_SIDE)
    if images.shape[0] != labels.shape[0]:
        raise PrunewiseError(f"{name}: {img_path} holds {images.shape[0]} images but {lbl_path} "
                             f"holds {labels.shape[0]} labels")
    if labels.max() >= num_classes:
        raise PrunewiseError(f"{lbl_path}: label {int(labels.max())} is out of range 0..{num_classes - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64)), img_path


def idx_folder(name: str, root) -> str:
    """The folder holding the four IDX files of ``name`` (``root`` or the default)."""
    default_root, package, _ = IDX_SETS[name]
    folder = os.fspath(root) if root is not None else default_root
    stems = [s for pair in IDX_FILES.values() for s in pair]
    hint = (f"install Debian's package {package} (apt-get install {package}) or pass --root DIR"
            if package else "pass --root DIR")
    if folder is None or not os.path.isdir(folder):
        raise PrunewiseError(f"{name}: data folder {folder!r} not found; {hint} with the four IDX files "
                             f"({', '.join(stems)}, gzipped or not)")
    missing = [s for s in stems if idx_path(folder, s) is None]
    if missing:
        raise PrunewiseError(f"{name}: {folder} lacks {', '.join(missing)} (or .gz); {hint}")
    return folder


def idx_val_size(n: int) -> int:
    """Validation images held out of ``n`` training images: one in twelve, at most IDX_VAL_SIZE."""
    return min(IDX_VAL_SIZE, n // 12)


def load_idx(name: str, root, image_size: int | None, limit: int | None) -> DataBundle:
    """Load ``fashion-mnist`` or ``mnist`` (see the module docstring for the splits)."""
    classes = IDX_SETS[name][2]
    folder = idx_folder(name, root)
    x_pool, y_pool, train_path = _read_idx_pair(name, folder, "train", len(classes))
    x_test, y_test, test_path = _read_idx_pair(name, folder, "test", len(classes))
    if x_pool.shape[1:] != x_test.shape[1:]:
        raise PrunewiseError(f"{name}: train images in {train_path} are {tuple(x_pool.shape[2:])} but test "
                             f"images in {test_path} are {tuple(x_test.shape[2:])}")
    size = 32 if image_size is None else int(image_size)
    x_pool, x_test = pad_or_resize(x_pool, size), pad_or_resize(x_test, size)
    keep, held = split_pool(y_pool.numpy(), 0.0, IDX_VAL_SEED, name, count=idx_val_size(len(y_pool)))
    if limit is not None:
        keep = keep[: int(limit)]
    train = make_split(x_pool, y_pool, keep)
    mean, std = channel_stats(train.x, name)
    return DataBundle(
        name=name, train=train, val=make_split(x_pool, y_pool, held),
        test=Split(x=x_test, y=y_test, index=torch.arange(len(y_test))),
        num_classes=len(classes), in_channels=1, image_size=size, mean=mean, std=std,
        augment={"crop_padding": max(1, round(size / 8)), "hflip": name == "fashion-mnist"},
        classes=classes,
    )


def pad_or_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad images symmetrically up to ``size`` when that is an even margin, else resize."""
    h = x.shape[-1]
    if size >= h and (size - h) % 2 == 0 and x.shape[-2] == h:
        m = (size - h) // 2
        return F.pad(x, (m, m, m, m)) if m else x
    return resize_uint8(x, size)
