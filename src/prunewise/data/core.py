"""Containers, batching, normalization and augmentation shared by every data set.

Every data set is held in memory as a ``uint8`` tensor of shape ``N x C x H x W`` plus
``int64`` labels (a :class:`Split`).  All per-batch work -- shuffling, augmentation,
conversion to float and normalization -- happens in :func:`batches`, so there is one
batching path for every data set and no ``DataLoader`` worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prunewise.errors import PrunewiseError
from prunewise.utils import take

#: Keys understood in an ``augment`` dict.
AUGMENT_KEYS = ("crop_padding", "hflip")


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a data set, held in memory.

    ``x`` is ``uint8`` ``N x C x H x W`` (raw pixels, 0..255), ``y`` is ``int64`` ``N``.
    ``index`` (optional) records, for every sample, its position in the source collection it
    was taken from (for ``digits`` the original ``load_digits`` order; for CIFAR / imagefolder
    the training pool for train/val and the test pool for test); it is bookkeeping only.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor | Sequence[int]) -> "Split":
        """A new split holding the samples at positions ``idx`` (in that order)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(
            x=take(self.x, idx),
            y=self.y[idx],
            index=None if self.index is None else self.index[idx],
        )


@dataclass
class DataBundle:
    """A loaded data set: three splits plus what a model and the batcher need to know."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: dict
    classes: tuple[str, ...] = field(default=())
    raw: bool = False   # inputs go to the model as stored (see :mod:`.tensors`)
    task: str | None = None   # what the data is for when not classification ("causal_lm")
    vocab: int = 0            # token data: how many ids its tokenizer has (0: not token data)
    tokenizer: Any = None     # text: the tokenizer that made the ids (None: bytes)

    def example(self, batch: int = 1):
        """A zero batch of ``batch`` inputs shaped like this data set's (for tracing, MACs and
        latency): images ``batch x C x H x W``, or a raw set's sample shape and dtype."""
        if not self.raw:
            return torch.zeros(batch, self.in_channels, self.image_size, self.image_size)
        x = self.train.x

        def zeros(t):
            return torch.zeros((batch, *t.shape[1:]), dtype=t.dtype)
        return {k: zeros(v) for k, v in x.items()} if isinstance(x, dict) else zeros(x)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def class_groups(labels: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group id for every sample: ``label // group_size`` (int64)."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise PrunewiseError(f"group_size={group_size!r} is invalid; it must be an integer >= 1")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PrunewiseError(f"class_groups needs integer labels, got dtype {labels.dtype}")
    return torch.div(labels.long(), int(group_size), rounding_mode="floor")


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` as float32.

    ``uint8`` input is first scaled to [0, 1]; floating input is taken to be in [0, 1] already.
    ``x`` is ``N x C x H x W`` or ``C x H x W``; ``mean``/``std`` have one entry per channel.
    """
    if x.dtype == torch.uint8:
        xf = x.to(torch.float32).div_(255.0)
    elif x.dtype.is_floating_point:
        xf = x.to(torch.float32)
    else:
        raise PrunewiseError(f"normalize needs a uint8 or float tensor, got dtype {x.dtype}")
    if xf.dim() not in (3, 4):
        raise PrunewiseError(f"normalize needs a C x H x W or N x C x H x W tensor, got shape {tuple(x.shape)}")
    channels = xf.shape[-3]
    mean_t = torch.as_tensor(tuple(float(m) for m in mean), dtype=torch.float32)
    std_t = torch.as_tensor(tuple(float(s) for s in std), dtype=torch.float32)
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise PrunewiseError(
            f"mean/std have {mean_t.numel()}/{std_t.numel()} entries but the images have {channels} channel(s); "
            "give one value per channel"
        )
    if not bool(torch.all(std_t > 0)):
        raise PrunewiseError(f"std={tuple(std_t.tolist())} is invalid; every entry must be > 0")
    shape = (channels, 1, 1)
    if xf is x:  # float32 input: do not modify the caller's tensor in place
        return (xf - mean_t.view(shape)) / std_t.view(shape)
    return xf.sub_(mean_t.view(shape)).div_(std_t.view(shape))


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels and crop back to the original size at a random,
    per-sample offset (one gather for the whole batch).  ``padding=0`` returns ``x`` unchanged."""
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise PrunewiseError(f"crop padding={padding!r} is invalid; it must be an integer >= 0")
    padding = int(padding)
    if padding == 0 or x.shape[0] == 0:
        return x
    if x.dim() != 4:
        raise PrunewiseError(f"random_crop needs an N x C x H x W tensor, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros; works for uint8 too
    span = 2 * padding + 1
    off_y = torch.randint(0, span, (n,), generator=generator)
    off_x = torch.randint(0, span, (n,), generator=generator)
    # One gather over each padded image plane: flat position of every output pixel.
    rows = off_y[:, None] + torch.arange(h)  # n x h
    cols = off_x[:, None] + torch.arange(w)  # n x w
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


def hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right independently with probability ``p``."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise PrunewiseError(f"hflip probability p={p!r} is invalid; it must be in [0, 1]")
    if x.shape[0] == 0 or p == 0.0:
        return x
    if x.dim() != 4:
        raise PrunewiseError(f"hflip needs an N x C x H x W tensor, got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def num_batches(split: Split, batch_size: int, limit: int | None = None, *, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for these arguments (without iterating)."""
    _check_batch_size(batch_size)
    n = _effective_len(len(split), limit)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batches(
    split: Split,
    bundle_or_stats: Any,
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    augment: Mapping[str, Any] | None = None,
    seed: int = 0,
    limit: int | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches: ``x`` float32 normalized ``N x C x H x W``, ``y`` int64.

    * ``bundle_or_stats``: a :class:`DataBundle` (its ``mean``/``std`` are used), a
      ``(mean, std)`` pair, a mapping with ``"mean"``/``"std"``, or ``None`` (only scale to [0, 1]).
    * ``shuffle``: random order drawn from ``seed`` (pass e.g. ``seed + epoch`` for a new order
      every epoch).  Everything, augmentation included, is deterministic given ``seed``.
    * ``augment``: ``None``/``{}`` = none; otherwise keys from :data:`AUGMENT_KEYS`:
      ``crop_padding`` (int, zero-padded random crop) and ``hflip`` (bool, or a probability).
      Augmentation acts on raw pixels, before normalization (so padding is black).
    * ``limit``: use only the first ``limit`` samples (after shuffling).
    * ``drop_last``: skip a final partial batch.
    * ``shard``: ``(rank, world)`` -- yield only this rank's share of every batch (positions
      ``rank, rank + world, ...``), cut after shuffling and augmentation, so the ranks' shares
      of one seed are disjoint and together exactly the single-process batches
      (:func:`prunewise.dist.part` gives it under torchrun; None = the whole batch).

    Arguments are checked when this is called, not when iteration starts.
    """
    _check_batch_size(batch_size)
    if isinstance(bundle_or_stats, DataBundle) and bundle_or_stats.raw:
        if augment:
            raise PrunewiseError(f"data set '{bundle_or_stats.name}' holds prepared inputs: "
                                 f"augmentation is for images")
        n = _effective_len(len(split), limit)
        return _iterate(split, None, None, int(batch_size), bool(shuffle), 0, 0.0, int(seed), n,
                        drop_last, shard, raw=True)
    mean, std = _stats_of(bundle_or_stats)
    crop_padding, flip_p = _parse_augment(augment)
    n = _effective_len(len(split), limit)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise PrunewiseError(f"seed={seed!r} is invalid; it must be an integer")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise PrunewiseError(f"shard={shard!r} is invalid; it must be (rank, world), 0 <= rank < world")
    if mean is not None:
        channels = split.x.shape[1] if split.x.dim() == 4 else None
        if channels is not None and (len(mean) != channels or len(std) != channels):
            raise PrunewiseError(
                f"normalization stats have {len(mean)} channel(s) but the split has {channels}; "
                "pass the DataBundle this split belongs to"
            )
    return _iterate(split, mean, std, int(batch_size), bool(shuffle), crop_padding, flip_p, int(seed), n, drop_last,
                    shard)


def _iterate(split, mean, std, batch_size, shuffle, crop_padding, flip_p, seed, n, drop_last, shard=None,
             raw=False):
    gen = torch.Generator().manual_seed(seed)
    if shuffle:
        order = torch.randperm(len(split), generator=gen)[:n]
    else:
        order = torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if raw:
            if shard is not None:
                idx = idx[shard[0] :: shard[1]]
            yield take(split.x, idx), split.y[idx]
            continue
        xb = split.x[idx]
        if crop_padding:
            xb = random_crop(xb, crop_padding, gen)
        if flip_p:
            xb = hflip(xb, gen, flip_p)
        if shard is not None:  # after the random draws: every rank draws the same numbers
            idx, xb = idx[shard[0] :: shard[1]], xb[shard[0] :: shard[1]]
        if mean is None:
            xb = xb.to(torch.float32).div_(255.0) if xb.dtype == torch.uint8 else xb.to(torch.float32)
        else:
            xb = normalize(xb, mean, std)
        yield xb.contiguous(), split.y[idx].long()


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PrunewiseError(f"batch_size={batch_size!r} is invalid; it must be an integer >= 1")


def check_limit(limit: Any) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise PrunewiseError(f"limit={limit!r} is invalid; it must be None or an integer >= 1")


def _effective_len(n: int, limit: int | None) -> int:
    check_limit(limit)
    return n if limit is None else min(n, int(limit))


def _stats_of(obj: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if obj is None:
        return None, None
    if isinstance(obj, DataBundle):
        mean, std = obj.mean, obj.std
    elif isinstance(obj, Mapping) and "mean" in obj and "std" in obj:
        mean, std = obj["mean"], obj["std"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        mean, std = obj
    elif hasattr(obj, "mean") and hasattr(obj, "std") and not isinstance(obj, torch.Tensor):
        mean, std = obj.mean, obj.std
    else:
        raise PrunewiseError(
            f"bundle_or_stats of type {type(obj).__name__} is invalid; "
            "pass a DataBundle, a (mean, std) pair, a {'mean', 'std'} mapping, or None"
        )
    try:
        mean_t = tuple(float(m) for m in mean)
        std_t = tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise PrunewiseError(f"mean={mean!r} / std={std!r} are invalid; they must be sequences of numbers") from None
    if len(mean_t) != len(std_t) or not mean_t:
        raise PrunewiseError(f"mean={mean_t} and std={std_t} are invalid; they need the same, non-zero length")
    if any(s <= 0 for s in std_t):
        raise PrunewiseError(f"std={std_t} is invalid; every entry must be > 0")
    return mean_t, std_t


def _parse_augment(augment: Mapping[str, Any] | None) -> tuple[int, float]:
    if not augment:
        return 0, 0.0
    if not isinstance(augment, Mapping):
        raise PrunewiseError(f"augment={augment!r} is invalid; it must be None or a dict with keys {AUGMENT_KEYS}")
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise PrunewiseError(f"augment keys {unknown} are unknown; allowed keys: {', '.join(AUGMENT_KEYS)}")
    pad = augment.get("crop_padding", 0) or 0
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise PrunewiseError(f"augment crop_padding={pad!r} is invalid; it must be an integer >= 0")
    flip = augment.get("hflip", False)
    if isinstance(flip, bool) or flip is None:
        flip_p = 0.5 if flip else 0.0
    elif isinstance(flip, (int, float, np.number)) and 0.0 <= float(flip) <= 1.0:
        flip_p = float(flip)
    else:
        raise PrunewiseError(f"augment hflip={flip!r} is invalid; it must be true/false or a probability in [0, 1]")
    return int(pad), flip_p


# --------------------------------------------------------------------------------------------
# Image statistics and resizing (shared by the loaders)
# --------------------------------------------------------------------------------------------


def channel_stats(x: torch.Tensor, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images in [0, 1] units (float64 accumulation, chunked)."""
    if x.shape[0] == 0:
        raise PrunewiseError(f"{what}: the training split is empty; cannot compute normalization statistics")
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-3)  # guard constant channels
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


#: The most values one input sample may hold (C x H x W): 4 Mi, 16 MB as float32.
MAX_SAMPLE_ELEMENTS = 1 << 22
#: The most bytes a data set's images may take in memory (uint8, all splits).
MAX_DATA_BYTES = 1 << 30


def check_images(n: int, channels: int, size: int, what: str) -> None:
    """Refuse, before allocating, images whose side ``size`` makes one sample or the whole data
    set (``n`` images of ``channels`` channels) larger than the readers' bounds; the message
    gives the largest side that fits."""
    per = channels * size * size
    fits = min(math.isqrt(MAX_SAMPLE_ELEMENTS // max(channels, 1)),
               math.isqrt(MAX_DATA_BYTES // max(n * channels, 1)))
    if per > MAX_SAMPLE_ELEMENTS or n * per > MAX_DATA_BYTES:
        raise PrunewiseError(f"{what}: image size {size} makes {n} images of {channels}x{size}x"
                             f"{size} ({n * per / 2**30:.1f} GiB), more than this reader holds "
                             f"({MAX_DATA_BYTES >> 30} GiB, {MAX_SAMPLE_ELEMENTS:,} values per "
                             f"image); use an image size of at most {fits}")


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 N x C x H x W images to size x size (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x
    check_images(x.shape[0], x.shape[1], size, "resizing the images")
    out = []
    shrink = size < x.shape[-1] or size < x.shape[-2]
    for start in range(0, x.shape[0], 2048):
        chunk = x[start : start + 2048].to(torch.float32)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)

