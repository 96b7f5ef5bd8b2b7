"""scikit-learn's bundled 8x8 handwritten digits (``digits``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .core import DataBundle, channel_stats, check_images
from .splits import make_split, split_pool

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed on purpose: the digits test split never depends on ``seed``


def load_digits(image_size: int, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    images = torch.from_numpy(np.asarray(raw.images, dtype=np.float32))  # N x 8 x 8, values 0..16
    labels = torch.from_numpy(np.asarray(raw.target, dtype=np.int64))
    x = images.unsqueeze(1).mul_(255.0 / 16.0)  # N x 1 x 8 x 8 in 0..255
    check_images(len(x), 1, image_size, "digits")
    parts = []
    for chunk in x.split(256):   # resized a few at a time: memory is the uint8 result's
        if image_size != 8:
            chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                                  align_corners=False, antialias=image_size < 8)
        parts.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    x = torch.cat(parts)

    y_np = labels.numpy()
    # Test split: fixed seed, independent of ``seed`` and ``limit``.
    pool, test_pos = split_pool(y_np, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED, "digits")
    if limit is not None:
        pool = pool[: int(limit)]
    keep, held = split_pool(y_np[pool], val_fraction, seed, "digits")
    train = make_split(x, labels, pool[keep])
    val = make_split(x, labels, pool[held])
    test = make_split(x, labels, test_pos)
    mean, std = channel_stats(train.x, "digits")
    return DataBundle(
        name="digits",
        train=train,
        val=val,
        test=test,
        num_classes=10,
        in_channels=1,
        image_size=image_size,
        mean=mean,
        std=std,
        augment={"crop_padding": max(1, round(image_size / 8)), "hflip": False},
        classes=tuple(str(i) for i in range(10)),
    )

