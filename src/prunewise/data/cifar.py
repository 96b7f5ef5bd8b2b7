"""CIFAR-10 / CIFAR-100 "python version" batch files.

The files are pickles; they are read with :func:`~prunewise.data.unpickle.safe_unpickle`,
which admits only plain containers and simple numpy arrays and bounds the work a file can
cause, so a tampered file raises :class:`~prunewise.errors.PrunewiseError` instead of running
code or exhausting memory.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from prunewise.errors import PrunewiseError

from .core import DataBundle, Split, resize_uint8
from .splits import make_split, split_pool
from .unpickle import safe_unpickle

# Per-channel statistics of the CIFAR training sets, in [0, 1] pixel units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar_folder(name: str, root: str | os.PathLike | None, files: Sequence[str]) -> str:
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    expected = ", ".join(files)
    if root is None:
        raise PrunewiseError(
            f"{name} needs a data root folder holding {expected} (or a '{sub}' subfolder with them); none was given"
        )
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise PrunewiseError(f"{name} data folder '{root}' does not exist; it must hold {expected} (or '{sub}/')")
    for folder in (os.path.join(root, sub), root):
        if os.path.isdir(folder) and any(os.path.isfile(os.path.join(folder, f)) for f in files):
            missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
            if missing:
                raise PrunewiseError(
                    f"{name} data folder '{folder}' lacks {', '.join(missing)}; expected files: {expected}"
                )
            return folder
    raise PrunewiseError(f"{name} data folder '{root}' holds none of the expected files: {expected} (also looked in '{sub}/')")


def read_cifar_batch(path: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise PrunewiseError(f"{path}: expected a dict in the CIFAR batch pickle, found {type(obj).__name__}")
    # Accept str keys too (files re-pickled under Python 3).
    get = lambda k: obj[k] if k in obj else obj.get(k.decode("ascii"))  # noqa: E731
    data, labels = get(b"data"), get(label_key)
    if data is None or labels is None:
        raise PrunewiseError(
            f"{path}: missing key {b'data' if data is None else label_key!r}; a CIFAR batch needs b'data' and {label_key!r}"
        )
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise PrunewiseError(f"{path}: b'data' is {desc}; expected a uint8 array of shape N x 3072")
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise PrunewiseError(f"{path}: b'data' holds values outside 0..255")
        data = data.astype(np.uint8)
    try:
        raw = np.asarray(labels)
        if raw.dtype.kind not in "ui" and raw.size:  # floats, bools, objects: never truncated
            raise TypeError
        labels = raw.astype(np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise PrunewiseError(f"{path}: {label_key!r} is not a list of integer labels") from None
    if labels.shape[0] != data.shape[0]:
        raise PrunewiseError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels under {label_key!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PrunewiseError(
            f"{path}: labels range {labels.min()}..{labels.max()}; allowed 0..{num_classes - 1}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, root, image_size: int | None, val_fraction: float, seed: int,
                limit: int | None) -> DataBundle:
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files = ["test_batch"]
        label_key, num_classes = b"labels", 10
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        train_files, test_files = ["train"], ["test"]
        label_key, num_classes = b"fine_labels", 100
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    folder = cifar_folder(name, root, train_files + test_files)

    def read(files: Sequence[str], cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, have = [], [], 0
        for f in files:
            if cap is not None and have >= cap:
                break
            data, labels = read_cifar_batch(os.path.join(folder, f), label_key, num_classes)
            xs.append(data)
            ys.append(labels)
            have += len(labels)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
        y = torch.from_numpy(np.concatenate(ys))
        if cap is not None:
            x, y = x[:cap], y[:cap]
        return x, y

    x_pool, y_pool = read(train_files, None if limit is None else int(limit))
    x_test, y_test = read(test_files)
    size = 32 if image_size is None else int(image_size)
    x_pool, x_test = resize_uint8(x_pool, size), resize_uint8(x_test, size)
    keep, held = split_pool(y_pool.numpy(), val_fraction, seed, name)
    return DataBundle(
        name=name,
        train=make_split(x_pool, y_pool, keep),
        val=make_split(x_pool, y_pool, held),
        test=Split(x=x_test, y=y_test, index=torch.arange(len(y_test))),
        num_classes=num_classes,
        in_channels=3,
        image_size=size,
        mean=mean,
        std=std,
        augment={"crop_padding": max(1, round(size / 8)), "hflip": True},
    )

