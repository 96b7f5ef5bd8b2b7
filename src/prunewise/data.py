"""Data sets, splits and a single fast batching function.

Every data set is held in memory as a ``uint8`` tensor of shape ``N x C x H x W`` plus
``int64`` labels (a :class:`Split`).  All per-batch work -- shuffling, augmentation,
conversion to float and normalization -- happens in :func:`batches`, so there is one
batching path for every data set and no ``DataLoader`` worker processes.

Supported data sets (:data:`DATASETS`):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); needs no files,
    ``root`` is ignored.  Pixel values 0..16 are rescaled to 0..255 and, by default, the images
    are upsampled bilinearly **once at load time** to 16x16 (``image_size=16``): the zoo's
    CIFAR-style networks downsample several times and an 8x8 input would shrink to nothing.
    The test split (20 %, stratified) is always drawn with seed 0, so test numbers are
    comparable across runs; the validation split is then carved out of the rest with ``seed``.

``cifar10`` / ``cifar100``
    The standard CIFAR "python version" files in a local folder (``root`` itself or its
    ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder).  The files are pickles; they are
    read with a restricted unpickler that only admits the few globals numpy arrays need, so a
    tampered file raises :class:`~prunewise.errors.PrunewiseError` instead of running code.
    Normalization uses the usual fixed CIFAR mean/std constants.

``imagefolder``
    ``root/train/<class>/*.{png,jpg,jpeg,bmp}`` and ``root/val/<class>/...`` (``val`` serves
    as the test split; our own validation split is carved out of ``train``).  Images are read
    with Pillow, converted to RGB, resized to ``image_size`` (default 32) and **all loaded into
    memory** as uint8 -- fine for the small folders this library targets.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prunewise.errors import PrunewiseError

__all__ = [
    "DATASETS",
    "Split",
    "DataBundle",
    "load",
    "batches",
    "num_batches",
    "class_groups",
    "normalize",
    "random_crop",
    "hflip",
    "AUGMENT_KEYS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "fashion-mnist", "mnist")

#: Keys understood in an ``augment`` dict.
AUGMENT_KEYS = ("crop_padding", "hflip")

# Per-channel statistics of the CIFAR training sets, in [0, 1] pixel units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed on purpose: the digits test split never depends on ``seed``
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


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
            x=self.x[idx],
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

    Arguments are checked when this is called, not when iteration starts.
    """
    _check_batch_size(batch_size)
    mean, std = _stats_of(bundle_or_stats)
    crop_padding, flip_p = _parse_augment(augment)
    n = _effective_len(len(split), limit)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise PrunewiseError(f"seed={seed!r} is invalid; it must be an integer")
    if mean is not None:
        channels = split.x.shape[1] if split.x.dim() == 4 else None
        if channels is not None and (len(mean) != channels or len(std) != channels):
            raise PrunewiseError(
                f"normalization stats have {len(mean)} channel(s) but the split has {channels}; "
                "pass the DataBundle this split belongs to"
            )
    return _iterate(split, mean, std, int(batch_size), bool(shuffle), crop_padding, flip_p, int(seed), n, drop_last)


def _iterate(split, mean, std, batch_size, shuffle, crop_padding, flip_p, seed, n, drop_last):
    gen = torch.Generator().manual_seed(seed)
    if shuffle:
        order = torch.randperm(len(split), generator=gen)[:n]
    else:
        order = torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        xb = split.x[idx]
        if crop_padding:
            xb = random_crop(xb, crop_padding, gen)
        if flip_p:
            xb = hflip(xb, gen, flip_p)
        if mean is None:
            xb = xb.to(torch.float32).div_(255.0) if xb.dtype == torch.uint8 else xb.to(torch.float32)
        else:
            xb = normalize(xb, mean, std)
        yield xb.contiguous(), split.y[idx].long()


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PrunewiseError(f"batch_size={batch_size!r} is invalid; it must be an integer >= 1")


def _check_limit(limit: Any) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise PrunewiseError(f"limit={limit!r} is invalid; it must be None or an integer >= 1")


def _effective_len(n: int, limit: int | None) -> int:
    _check_limit(limit)
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
# Loading
# --------------------------------------------------------------------------------------------


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
) -> DataBundle:
    """Load data set ``name`` (one of :data:`DATASETS`) into a :class:`DataBundle`.

    ``image_size`` defaults to 16 for digits and 32 otherwise (CIFAR is resized only when a
    different size is asked for).  ``val_fraction`` of the training pool becomes the validation
    split (seeded by ``seed``; stratified by class where the counts allow).  ``limit`` keeps only
    the first ``limit`` samples of the training pool (before the validation split is carved out),
    for quick runs (for imagefolder, whose files are listed class by class, the first ``limit`` of a
    fixed seed-0 shuffle, so several classes are kept); the test split is never limited.
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
    _check_limit(limit)
    if name == "digits":
        return _load_digits(16 if image_size is None else int(image_size), vf, int(seed), limit)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, image_size, vf, int(seed), limit)
    if name in IDX_SETS:
        return _load_idx(name, root, image_size, limit)
    return _load_imagefolder(root, 32 if image_size is None else int(image_size), vf, int(seed), limit)


def _split_pool(labels: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..n-1`` divided into (keep, held_out) with ``fraction`` held out, seeded.

    Stratified by label when every class can be represented on both sides, else a plain
    seeded random split.  Order within each part is random (so an unshuffled ``limit`` still
    sees a mix of classes).
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    positions = np.arange(n)
    rs = int(seed) % (2**32)
    if fraction <= 0.0:
        return np.random.RandomState(rs).permutation(n), np.empty(0, dtype=np.int64)
    n_held = math.ceil(fraction * n)
    if n_held >= n:
        raise PrunewiseError(
            f"{what}: {n} sample(s) are too few to hold out a fraction of {fraction}; "
            "use more data (a larger limit) or a smaller val_fraction"
        )
    try:
        keep, held = train_test_split(positions, test_size=fraction, random_state=rs, stratify=labels)
    except ValueError:  # some class too small to stratify
        keep, held = train_test_split(positions, test_size=fraction, random_state=rs, stratify=None)
    return np.asarray(keep, dtype=np.int64), np.asarray(held, dtype=np.int64)


def _make_split(x: torch.Tensor, y: torch.Tensor, pos: np.ndarray, index: torch.Tensor | None = None) -> Split:
    p = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64))
    return Split(x=x[p].contiguous(), y=y[p].contiguous(), index=(p.clone() if index is None else index[p]))


def _channel_stats(x: torch.Tensor, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 N x C x H x W images to size x size (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x
    out = []
    shrink = size < x.shape[-1] or size < x.shape[-2]
    for start in range(0, x.shape[0], 2048):
        chunk = x[start : start + 2048].to(torch.float32)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


# ---- digits ---------------------------------------------------------------------------------


def _load_digits(image_size: int, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(np.asarray(raw.images, dtype=np.float32))  # N x 8 x 8, values 0..16
    labels = torch.from_numpy(np.asarray(raw.target, dtype=np.int64))
    x = images.unsqueeze(1).mul_(255.0 / 16.0)  # N x 1 x 8 x 8 in 0..255
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=image_size < 8)
    x = x.round_().clamp_(0, 255).to(torch.uint8)

    y_np = labels.numpy()
    # Test split: fixed seed, independent of ``seed`` and ``limit``.
    pool, test_pos = _split_pool(y_np, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED, "digits")
    if limit is not None:
        pool = pool[: int(limit)]
    keep, held = _split_pool(y_np[pool], val_fraction, seed, "digits")
    train = _make_split(x, labels, pool[keep])
    val = _make_split(x, labels, pool[held])
    test = _make_split(x, labels, test_pos)
    mean, std = _channel_stats(train.x, "digits")
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


# ---- CIFAR ----------------------------------------------------------------------------------


def _numpy_global(*candidates: str) -> Any:
    """The first importable ``module:attr`` among ``candidates`` (numpy moved ``core`` -> ``_core``)."""
    for cand in candidates:
        module, _, attr = cand.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise PrunewiseError(f"this numpy lacks all of {candidates}; cannot read array pickles")  # pragma: no cover


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    reconstruct = ("numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct")
    frombuffer = ("numpy._core.numeric:_frombuffer", "numpy.core.numeric:_frombuffer")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
    # Protocol-5 array pickles (numpy >= 1.16) rebuild arrays from a raw buffer this way.
    for module in ("numpy._core.numeric", "numpy.core.numeric"):
        table[(module, "_frombuffer")] = frombuffer
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the handful of globals numpy arrays and containers need.

    Anything else (``os.system``, ``builtins.eval``, ...) raises :class:`PrunewiseError`
    before it can be called.  Allowed names are mapped to the real objects here instead of
    being imported by name.
    """

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._table = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        entry = self._table.get((module, name))
        if entry is None:
            raise PrunewiseError(
                f"{self._path}: refusing to load global '{module}.{name}' from this pickle; "
                "only numpy arrays and plain containers are allowed (the file is not a genuine CIFAR batch)"
            )
        if isinstance(entry, tuple):
            entry = _numpy_global(*entry)
        return entry

    def persistent_load(self, pid: Any) -> Any:
        raise PrunewiseError(f"{self._path}: persistent ids are not allowed in a CIFAR batch file")


def _safe_unpickle(path: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, path).load()
    except PrunewiseError:
        raise
    except OSError as exc:
        raise PrunewiseError(f"{path}: cannot read CIFAR batch file ({exc.strerror or exc})") from None
    except Exception as exc:  # UnpicklingError, EOFError, bad numpy state, ...
        raise PrunewiseError(f"{path}: not a valid CIFAR batch pickle ({type(exc).__name__}: {exc})") from None


def _cifar_folder(name: str, root: str | os.PathLike | None, files: Sequence[str]) -> str:
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


def _read_cifar_batch(path: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = _safe_unpickle(path)
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
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise PrunewiseError(f"{path}: {label_key!r} is not a list of integer labels") from None
    if labels.shape[0] != data.shape[0]:
        raise PrunewiseError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels under {label_key!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PrunewiseError(
            f"{path}: labels range {labels.min()}..{labels.max()}; allowed 0..{num_classes - 1}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, root, image_size: int | None, val_fraction: float, seed: int,
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
    folder = _cifar_folder(name, root, train_files + test_files)

    def read(files: Sequence[str], cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, have = [], [], 0
        for f in files:
            if cap is not None and have >= cap:
                break
            data, labels = _read_cifar_batch(os.path.join(folder, f), label_key, num_classes)
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
    x_pool, x_test = _resize_uint8(x_pool, size), _resize_uint8(x_test, size)
    keep, held = _split_pool(y_pool.numpy(), val_fraction, seed, name)
    return DataBundle(
        name=name,
        train=_make_split(x_pool, y_pool, keep),
        val=_make_split(x_pool, y_pool, held),
        test=Split(x=x_test, y=y_test, index=torch.arange(len(y_test))),
        num_classes=num_classes,
        in_channels=3,
        image_size=size,
        mean=mean,
        std=std,
        augment={"crop_padding": max(1, round(size / 8)), "hflip": True},
    )


# ---- MNIST / Fashion-MNIST (IDX files) -------------------------------------------------------

IDX_SETS = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist",
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot")),
    "mnist": (None, None, tuple(str(i) for i in range(10))),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_VAL_SIZE = 5000  # fixed 55,000 / 5,000 train / validation split, always seed 0
_IDX_MAX_ITEMS = 10_000_000
_IDX_MAX_SIDE = 4096


def _idx_path(folder: str, stem: str) -> str | None:
    for cand in (stem, stem + ".gz"):
        path = os.path.join(folder, cand)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str, ndim: int) -> np.ndarray:
    """A uint8 IDX file (optionally gzipped) as an array, checked strictly.

    The magic number must say unsigned bytes with ``ndim`` dimensions, every dimension must be
    positive and bounded, and the payload must hold exactly the bytes the header announces.
    """
    import gzip

    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(4 + 4 * ndim)
            if len(head) < 4:
                raise PrunewiseError(f"{path}: file is too short to be an IDX file")
            if head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
                raise PrunewiseError(
                    f"{path}: bad IDX magic {head[:4].hex()}; expected 000008{ndim:02x} (unsigned bytes, {ndim}-D)")
            if len(head) < 4 + 4 * ndim:
                raise PrunewiseError(f"{path}: IDX header is truncated")
            dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            if dims[0] < 1 or dims[0] > _IDX_MAX_ITEMS or any(d < 1 or d > _IDX_MAX_SIDE for d in dims[1:]):
                raise PrunewiseError(f"{path}: IDX dimensions {dims} are out of range")
            want = math.prod(dims)
            payload = fh.read(want + 1)
    except PrunewiseError:
        raise
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise PrunewiseError(f"{path}: cannot read IDX file ({exc})") from None
    if len(payload) != want:
        what = "truncated" if len(payload) < want else "longer than its header says"
        raise PrunewiseError(f"{path}: IDX file is {what} (header announces {want} bytes of data)")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_idx_pair(name: str, folder: str, part: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = IDX_FILES[part]
    img_path, lbl_path = _idx_path(folder, img_stem), _idx_path(folder, lbl_stem)
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise PrunewiseError(f"{name}: {img_path} holds {images.shape[0]} images but {lbl_path} "
                             f"holds {labels.shape[0]} labels")
    if labels.max() >= num_classes:
        raise PrunewiseError(f"{lbl_path}: label {int(labels.max())} is out of range 0..{num_classes - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _load_idx(name: str, root, image_size: int | None, limit: int | None) -> DataBundle:
    default_root, package, classes = IDX_SETS[name]
    folder = os.fspath(root) if root is not None else default_root
    stems = [s for pair in IDX_FILES.values() for s in pair]
    hint = (f"install Debian's package {package} (apt-get install {package}) or pass --root DIR"
            if package else "pass --root DIR")
    if folder is None or not os.path.isdir(folder):
        raise PrunewiseError(f"{name}: data folder {folder!r} not found; {hint} with the four IDX files "
                             f"({', '.join(stems)}, gzipped or not)")
    missing = [s for s in stems if _idx_path(folder, s) is None]
    if missing:
        raise PrunewiseError(f"{name}: {folder} lacks {', '.join(missing)} (or .gz); {hint}")
    x_pool, y_pool = _read_idx_pair(name, folder, "train", len(classes))
    x_test, y_test = _read_idx_pair(name, folder, "test", len(classes))
    if x_pool.shape[1:] != x_test.shape[1:]:
        raise PrunewiseError(f"{name}: train images are {tuple(x_pool.shape[2:])} but test images are "
                             f"{tuple(x_test.shape[2:])}")
    size = 32 if image_size is None else int(image_size)
    x_pool, x_test = _pad_or_resize(x_pool, size), _pad_or_resize(x_test, size)
    n_val = min(IDX_VAL_SIZE, len(y_pool) // 12) if len(y_pool) < 12 * IDX_VAL_SIZE else IDX_VAL_SIZE
    keep, held = _split_pool(y_pool.numpy(), n_val / len(y_pool), 0, name)
    if limit is not None:
        keep = keep[: int(limit)]
    train = _make_split(x_pool, y_pool, keep)
    mean, std = _channel_stats(train.x, name)
    return DataBundle(
        name=name, train=train, val=_make_split(x_pool, y_pool, held),
        test=Split(x=x_test, y=y_test, index=torch.arange(len(y_test))),
        num_classes=len(classes), in_channels=1, image_size=size, mean=mean, std=std,
        augment={"crop_padding": max(1, round(size / 8)), "hflip": name == "fashion-mnist"},
        classes=classes,
    )


def _pad_or_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad images symmetrically up to ``size`` when that is an even margin, else resize."""
    h = x.shape[-1]
    if size >= h and (size - h) % 2 == 0 and x.shape[-2] == h:
        m = (size - h) // 2
        return F.pad(x, (m, m, m, m)) if m else x
    return _resize_uint8(x, size)


# ---- image folder ---------------------------------------------------------------------------


def _image_files(folder: str) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(_IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )


def _read_images(paths: Sequence[str], size: int) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except Exception as exc:  # OSError, DecompressionBombError, truncated files, ...
            raise PrunewiseError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(out)


def _load_imagefolder(root, image_size: int, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
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
    exts = "|".join(e.lstrip(".") for e in _IMAGE_EXTENSIONS)

    train_paths, train_labels = [], []
    for c in classes:
        files = _image_files(os.path.join(train_dir, c))
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
        files = _image_files(os.path.join(test_dir, c))
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
    x_pool = _read_images([train_paths[i] for i in chosen], image_size)
    y_pool = torch.from_numpy(y_all[chosen])
    idx_pool = torch.from_numpy(chosen.astype(np.int64))
    keep, held = _split_pool(y_pool.numpy(), val_fraction, seed, "imagefolder")

    # The val folder is listed class by class; put it in a fixed random order so that an
    # unshuffled ``limit`` on the test split still sees every class.
    test_order = np.random.RandomState(0).permutation(len(test_paths))
    x_test = _read_images([test_paths[i] for i in test_order], image_size)
    y_test = torch.as_tensor(np.asarray(test_labels, dtype=np.int64)[test_order])

    train = _make_split(x_pool, y_pool, keep, idx_pool)
    mean, std = _channel_stats(train.x, "imagefolder")
    return DataBundle(
        name="imagefolder",
        train=train,
        val=_make_split(x_pool, y_pool, held, idx_pool),
        test=Split(x=x_test, y=y_test, index=torch.from_numpy(test_order.astype(np.int64))),
        num_classes=len(classes),
        in_channels=3,
        image_size=image_size,
        mean=mean,
        std=std,
        augment={"crop_padding": max(1, round(image_size / 8)), "hflip": True},
        classes=tuple(classes),
    )
