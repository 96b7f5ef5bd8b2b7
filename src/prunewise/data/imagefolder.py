"""Image folders: ``root/train/<class>/*`` and ``root/val/<class>/*`` read with Pillow."""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import torch

from prunewise.errors import PrunewiseError

from .core import DataBundle, Split, channel_stats, check_images
from .splits import make_split, split_pool

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def image_files(folder: str) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )


#: The most pixels one image file may declare (a 20 KB PNG can declare 13000 x 13000).
MAX_PIXELS = 1 << 25


def _read_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():  # our own bound replaces PIL's decompression-bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:  # checked from the header, before decoding
                raise PrunewiseError(f"{path}: the image declares {im.width}x{im.height} "
                                     f"pixels, more than {MAX_PIXELS:,}")
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def read_images(paths: Sequence[str], size: int) -> torch.Tensor:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = _read_image(path, size)
        except PrunewiseError:
            raise
        except Exception as exc:  # OSError, DecompressionBombError, truncated files, ...
            raise PrunewiseError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(out)


def load_imagefolder(root, image_size: int, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
    if root is None:
        raise PrunewiseError("imagefolder needs a data root folder with train/<class>/ and val/<class>/; none was given")
    root = os.fspath(root)
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for d in (train_dir, test_dir):
        if not os.path.isdir(d):
            raise PrunewiseError(f"imagefolder folder '{d}' does not exist; expected {root}/train/<class>/ and {root}/val/<class>/")
    classes = sorted(e for e in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, e)))
    if not classes:
        raise PrunewiseError(f"imagefolder folder '{train_dir}' has no class subfolders; expected {train_dir}/<class>/*.png")
    class_index = {c: i for i, c in enumerate(classes)}
    exts = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)

    train_paths, train_labels = [], []
    for c in classes:
        files = image_files(os.path.join(train_dir, c))
        if not files:
            raise PrunewiseError(f"imagefolder class folder '{os.path.join(train_dir, c)}' holds no images (*.{exts})")
        train_paths += files
        train_labels += [class_index[c]] * len(files)

    test_paths, test_labels = [], []
    for c in sorted(e for e in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, e))):
        if c not in class_index:
            raise PrunewiseError(
                f"imagefolder class '{c}' in '{test_dir}' is not among the train classes: {', '.join(classes)}"
            )
        files = image_files(os.path.join(test_dir, c))
        test_paths += files
        test_labels += [class_index[c]] * len(files)
    if not test_paths:
        raise PrunewiseError(f"imagefolder folder '{test_dir}' holds no images (*.{exts}) in class subfolders")

    y_all = np.asarray(train_labels, dtype=np.int64)
    if limit is not None:
        # Take the first ``limit`` of a fixed (seed 0) shuffle, so a small limit still covers several classes.
        chosen = np.random.RandomState(0).permutation(len(train_paths))[: int(limit)]
    else:
        chosen = np.arange(len(train_paths))
    check_images(len(chosen) + len(test_paths), 3, image_size, "imagefolder")
    x_pool = read_images([train_paths[i] for i in chosen], image_size)
    y_pool = torch.from_numpy(y_all[chosen])
    idx_pool = torch.from_numpy(chosen.astype(np.int64))
    keep, held = split_pool(y_pool.numpy(), val_fraction, seed, "imagefolder")

    # The val folder is listed class by class; put it in a fixed random order so that an
    # unshuffled ``limit`` on the test split still sees every class.
    test_order = np.random.RandomState(0).permutation(len(test_paths))
    x_test = read_images([test_paths[i] for i in test_order], image_size)
    y_test = torch.as_tensor(np.asarray(test_labels, dtype=np.int64)[test_order])

    train = make_split(x_pool, y_pool, keep, idx_pool)
    mean, std = channel_stats(train.x, "imagefolder")
    return DataBundle(
        name="imagefolder",
        train=train,
        val=make_split(x_pool, y_pool, held, idx_pool),
        test=Split(x=x_test, y=y_test, index=torch.from_numpy(test_order.astype(np.int64))),
        num_classes=len(classes),
        in_channels=3,
        image_size=image_size,
        mean=mean,
        std=std,
        augment={"crop_padding": max(1, round(image_size / 8)), "hflip": True},
        classes=tuple(classes),
    )
