"""Data sets, splits and a single fast batching function.

This package keeps every reader in its own module: :mod:`.core` (containers, batching,
normalization, augmentation), :mod:`.splits` (seeded, stratified splits), :mod:`.digits`,
:mod:`.cifar` (with the restricted unpickler in :mod:`.unpickle`), :mod:`.imagefolder`,
:mod:`.idx` (MNIST / Fashion-MNIST) and :mod:`.loaders` (:func:`load`).

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
    read with a restricted unpickler that only admits the few globals numpy arrays need and
    bounds the size of what a file can build, so a tampered file raises
    :class:`~prunewise.errors.PrunewiseError` instead of running code or exhausting memory.
    Normalization uses the usual fixed CIFAR mean/std constants.

``imagefolder``
    ``root/train/<class>/*.{png,jpg,jpeg,bmp}`` and ``root/val/<class>/...`` (``val`` serves
    as the test split; our own validation split is carved out of ``train``).  Images are read
    with Pillow, converted to RGB, resized to ``image_size`` (default 32) and **all loaded into
    memory** as uint8 -- fine for the small folders this library targets.

``fashion-mnist`` / ``mnist``
    The four IDX files (gzipped or not) in ``root``; Fashion-MNIST defaults to
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).  The
    28x28 images are zero-padded to 32x32; the validation split is a fixed, seed-0, stratified
    55,000 / 5,000 division of the training file (see :mod:`.idx`); the test split is the
    official 10,000 images.

``tensors``
    Any prepared data set, ``root`` a ``.safetensors`` file of inputs and labels per split (see
    :mod:`.tensors`); :func:`from_tensors` / :func:`from_batches` build the same from memory.
    Its inputs reach the model as stored: token ids, waveforms, features.
"""

from __future__ import annotations

from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .core import (
    AUGMENT_KEYS,
    DataBundle,
    Split,
    batches,
    class_groups,
    hflip,
    normalize,
    num_batches,
    random_crop,
)
from .idx import IDX_FILES, IDX_SETS, IDX_VAL_SIZE, read_idx
from .loaders import DATASETS, load
from .tensors import from_batches, from_tensors

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
    "read_idx",
    "IDX_SETS",
    "IDX_FILES",
    "IDX_VAL_SIZE",
    "from_tensors",
    "from_batches",
]
