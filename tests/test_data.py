"""Tests for prunewise.data: splits, batching, augmentation, CIFAR/imagefolder readers."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from prunewise import data
from prunewise.errors import PrunewiseError
from helpers import assert_bad_input, invoke
from prunewise import data as D


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


# ---- digits ---------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_disjoint(digits):
    b = digits
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert len(b.test) == 360  # ceil(0.2 * 1797)
    assert len(b.val) == 144  # ceil(0.1 * 1437)
    idx = torch.cat([b.train.index, b.val.index, b.test.index])
    assert torch.equal(torch.sort(idx).values, torch.arange(1797))  # every sample exactly once
    for s in (b.train, b.val, b.test):
        assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
        assert tuple(s.x.shape[1:]) == (1, 16, 16) and s.x.shape[0] == len(s)
    assert b.num_classes == 10 and b.in_channels == 1 and b.image_size == 16
    assert set(b.train.y.tolist()) == set(range(10)) and set(b.test.y.tolist()) == set(range(10))
    assert int(b.train.x.max()) > 200  # scaled 0..16 -> 0..255
    assert b.augment == {"crop_padding": 2, "hflip": False}
    # stats come from the train split
    xf = b.train.x.double() / 255
    assert b.mean[0] == pytest.approx(float(xf.mean()), abs=1e-4)
    assert b.std[0] == pytest.approx(float(xf.std(unbiased=False)), abs=1e-4)


def test_digits_labels_match_sklearn(digits):
    from sklearn.datasets import load_digits

    target = torch.as_tensor(load_digits().target)
    assert torch.equal(digits.train.y, target[digits.train.index])
    assert torch.equal(digits.test.y, target[digits.test.index])


def test_digits_stratified_test_split(digits):
    counts = torch.bincount(digits.test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


def test_digits_deterministic_and_test_fixed_across_seeds(digits):
    again = data.load("digits", seed=0)
    assert torch.equal(again.train.index, digits.train.index)
    assert torch.equal(again.train.x, digits.train.x)
    other = data.load("digits", seed=1)
    assert torch.equal(other.test.index, digits.test.index)
    assert torch.equal(other.test.x, digits.test.x)
    assert not torch.equal(other.val.index, digits.val.index)


def test_digits_options():
    b = data.load("digits", image_size=8, val_fraction=0.0, limit=100)
    assert tuple(b.train.x.shape) == (100, 1, 8, 8)
    assert len(b.val) == 0 and tuple(b.val.x.shape[1:]) == (1, 8, 8)
    assert len(b.test) == 360
    # 8x8 at 0..255 is the raw data rescaled
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images)
    expect = (raw[b.train.index] * 255 / 16).round().to(torch.uint8)
    assert torch.equal(b.train.x[:, 0], expect)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(name="svhn"), "digits, cifar10, cifar100, imagefolder, fashion-mnist, mnist"),
        (dict(name="digits", val_fraction=1.0), "val_fraction"),
        (dict(name="digits", val_fraction=-0.1), "val_fraction"),
        (dict(name="digits", image_size=0), "image_size"),
        (dict(name="digits", limit=0), "limit"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(PrunewiseError) as info:
        data.load(**kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# ---- batching and augmentation ----------------------------------------------------------------


def test_batches_normalized_shapes_and_count(digits):
    out = list(data.batches(digits.train, digits, batch_size=100))
    assert len(out) == data.num_batches(digits.train, 100) == -(-len(digits.train) // 100)
    x = torch.cat([b[0] for b in out])
    y = torch.cat([b[1] for b in out])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (len(digits.train), 1, 16, 16)
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-2)
    assert torch.equal(y, digits.train.y)  # no shuffle: original order


def test_batches_shuffle_determinism_and_limit(digits):
    def run(seed, **kw):
        return [(x.clone(), y.clone()) for x, y in data.batches(digits.train, digits, 64, shuffle=True, seed=seed, **kw)]

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    # shuffling is a permutation
    assert torch.equal(torch.sort(torch.cat([y for _, y in a])).values, torch.sort(digits.train.y).values)

    lim = run(3, limit=100)
    assert [len(y) for _, y in lim] == [64, 36]
    assert data.num_batches(digits.train, 64, limit=100) == 2
    assert torch.equal(torch.cat([y for _, y in lim]), torch.cat([y for _, y in a])[:100])
    assert data.num_batches(digits.train, 64, limit=100, drop_last=True) == 1
    assert len(list(data.batches(digits.train, digits, 64, limit=100, drop_last=True))) == 1


def test_batches_augmentation_changes_pixels_keeps_shape(digits):
    plain = list(data.batches(digits.train, digits, 256, seed=1))
    aug = list(data.batches(digits.train, digits, 256, seed=1, augment={"crop_padding": 2, "hflip": True}))
    aug2 = list(data.batches(digits.train, digits, 256, seed=1, augment={"crop_padding": 2, "hflip": True}))
    assert len(plain) == len(aug)
    for (xp, yp), (xa, ya), (xb, _) in zip(plain, aug, aug2):
        assert xp.shape == xa.shape and torch.equal(yp, ya)
        assert torch.equal(xa, xb)  # deterministic given seed
    assert not torch.equal(plain[0][0], aug[0][0])
    # empty dict = no augmentation
    none = list(data.batches(digits.train, digits, 256, seed=1, augment={}))
    assert all(torch.equal(p[0], n[0]) for p, n in zip(plain, none))


def test_batches_rejects_bad_arguments(digits):
    with pytest.raises(PrunewiseError, match="batch_size"):
        data.batches(digits.train, digits, 0)
    with pytest.raises(PrunewiseError, match="rotate"):
        data.batches(digits.train, digits, 8, augment={"rotate": 10})
    with pytest.raises(PrunewiseError, match="channel"):
        data.batches(digits.train, ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)), 8)


def test_batches_accepts_stats_pair(digits):
    x1, _ = next(iter(data.batches(digits.val, digits, 32)))
    x2, _ = next(iter(data.batches(digits.val, (digits.mean, digits.std), 32)))
    assert torch.equal(x1, x2)


def test_random_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(data.random_crop(x, 0, g), x)
    y = data.random_crop(x, 3, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert (y == 0).any()  # zero padding shows up somewhere (inputs are all >= 1)
    # every output is a shifted copy of its input
    for i in range(16):
        padded = torch.nn.functional.pad(x[i], (3, 3, 3, 3))
        assert any(
            torch.equal(padded[:, r : r + 8, c : c + 8], y[i]) for r in range(7) for c in range(7)
        )


def test_hflip():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    assert torch.equal(data.hflip(x, g, p=1.0), x.flip(-1))
    assert torch.equal(data.hflip(x, g, p=0.0), x)
    x = torch.rand(200, 1, 4, 4)
    y = data.hflip(x, g)
    flipped = sum(torch.equal(y[i], x[i].flip(-1)) for i in range(200))
    assert 60 < flipped < 140


def test_normalize():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1 x 2 x 1 x 2
    out = data.normalize(x, (0.5, 0.2), (0.5, 0.1))
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]), atol=1e-6)
    xf = x.float() / 255
    assert torch.allclose(data.normalize(xf, (0.5, 0.2), (0.5, 0.1)), out)
    assert torch.equal(xf, x.float() / 255)  # input untouched
    with pytest.raises(PrunewiseError):
        data.normalize(x, (0.5,), (0.5,))


def test_class_groups():
    labels = torch.tensor([0, 1, 2, 3, 9, 10, 99])
    assert data.class_groups(labels, 5).tolist() == [0, 0, 0, 0, 1, 2, 19]
    assert torch.equal(data.class_groups(labels, 1), labels)
    with pytest.raises(PrunewiseError):
        data.class_groups(labels, 0)


# ---- CIFAR ----------------------------------------------------------------------------------


def _dump(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _fake_cifar10(folder, per_batch=6, seed=0):
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.randint(0, 10, per_batch)],
            b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
            b"filenames": [b"x.png"] * per_batch,
        }
        _dump(os.path.join(folder, name), d)
        batches[name] = d
    return batches


def test_cifar10_loads(tmp_path):
    raw = _fake_cifar10(tmp_path / "cifar-10-batches-py")
    b = data.load("cifar10", str(tmp_path), val_fraction=0.2, seed=1)
    assert len(b.train) + len(b.val) == 30 and len(b.val) == 6 and len(b.test) == 6
    assert b.num_classes == 10 and b.in_channels == 3 and b.image_size == 32
    assert tuple(b.train.x.shape[1:]) == (3, 32, 32) and b.train.x.dtype == torch.uint8
    assert b.mean == data.CIFAR10_MEAN and b.augment == {"crop_padding": 4, "hflip": True}
    all_x = np.concatenate([raw[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    all_y = sum((raw[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    for s in (b.train, b.val):
        assert torch.equal(s.x, torch.from_numpy(all_x)[s.index])
        assert s.y.tolist() == [all_y[i] for i in s.index.tolist()]
    assert set(b.train.index.tolist()).isdisjoint(b.val.index.tolist())
    assert b.test.y.tolist() == raw["test_batch"][b"labels"]
    assert torch.equal(b.test.x, torch.from_numpy(raw["test_batch"][b"data"].reshape(-1, 3, 32, 32)))
    # folder given directly, limit, and resizing
    small = data.load("cifar10", str(tmp_path / "cifar-10-batches-py"), val_fraction=0.0, limit=8, image_size=16)
    assert len(small.train) == 8 and len(small.val) == 0
    assert sorted(small.train.index.tolist()) == list(range(8))
    assert tuple(small.test.x.shape) == (6, 3, 16, 16)
    xb, yb = next(iter(data.batches(small.train, small, 4, augment=small.augment)))
    assert tuple(xb.shape) == (4, 3, 16, 16)


def test_cifar100_loads(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    tr = {b"fine_labels": list(range(0, 100, 5)), b"coarse_labels": [0] * 20,
          b"data": rng.randint(0, 256, (20, 3072)).astype(np.uint8)}
    te = {b"fine_labels": [99, 0, 42], b"coarse_labels": [0] * 3,
          b"data": rng.randint(0, 256, (3, 3072)).astype(np.uint8)}
    _dump(folder / "train", tr)
    _dump(folder / "test", te)
    b = data.load("cifar100", tmp_path, val_fraction=0.25)
    assert b.num_classes == 100 and b.mean == data.CIFAR100_MEAN
    assert len(b.train) == 15 and len(b.val) == 5
    assert b.test.y.tolist() == [99, 0, 42]
    assert tuple(b.test.x.shape) == (3, 3, 32, 32)
    assert torch.equal(b.val.y, torch.tensor(tr[b"fine_labels"])[b.val.index])


def test_cifar_missing_files(tmp_path):
    _fake_cifar10(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(PrunewiseError) as info:
        data.load("cifar10", str(tmp_path))
    msg = str(info.value)
    assert "data_batch_3" in msg and str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(PrunewiseError, match="does not exist"):
        data.load("cifar10", str(tmp_path / "nope"))
    with pytest.raises(PrunewiseError, match="train, test"):
        data.load("cifar100", str(tmp_path))  # holds no cifar100 files
    with pytest.raises(PrunewiseError, match="cifar10"):
        data.load("cifar10", None)


class _Boom:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_booby_trapped_pickle_is_refused(tmp_path):
    _fake_cifar10(tmp_path)
    pwned = tmp_path / "pwned"
    _dump(tmp_path / "data_batch_2", {b"data": _Boom(pwned), b"labels": [0]})
    with pytest.raises(PrunewiseError) as info:
        data.load("cifar10", str(tmp_path))
    msg = str(info.value)
    assert "data_batch_2" in msg and "system" in msg and "\n" not in msg
    assert not pwned.exists()


def test_cifar_other_globals_refused(tmp_path):
    # builtins.eval via a hand-written protocol-0 pickle
    _fake_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(PrunewiseError, match="builtins.eval"):
        data.load("cifar10", str(tmp_path))
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(PrunewiseError, match="test_batch"):
        data.load("cifar10", str(tmp_path))


def test_cifar_bad_contents(tmp_path):
    _fake_cifar10(tmp_path)
    _dump(tmp_path / "data_batch_1", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(PrunewiseError, match="3072"):
        data.load("cifar10", str(tmp_path))
    _dump(tmp_path / "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(PrunewiseError, match="0..9"):
        data.load("cifar10", str(tmp_path))


# ---- image folder ---------------------------------------------------------------------------


def _write_png(path, color, size=(10, 7), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_imagefolder_loads(tmp_path):
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for cls, col in colors.items():
        for i in range(5):
            _write_png(tmp_path / "train" / cls / f"{i}.png", col)
        _write_png(tmp_path / "val" / cls / "0.png", col)
    _write_png(tmp_path / "train" / "dog" / "gray.PNG", 128, mode="L")  # grayscale -> RGB, upper-case ext
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    b = data.load("imagefolder", str(tmp_path), image_size=8, val_fraction=0.25, seed=0)
    assert b.classes == ("cat", "dog") and b.num_classes == 2 and b.in_channels == 3 and b.image_size == 8
    assert len(b.train) + len(b.val) == 11 and len(b.val) == 3 and len(b.test) == 2
    assert tuple(b.train.x.shape[1:]) == (3, 8, 8) and b.train.x.dtype == torch.uint8
    # pixel content follows the label
    for s in (b.train, b.test):
        for x, y in zip(s.x, s.y):
            if int(x[0, 0, 0]) == 128:
                assert int(y) == 1
            else:
                assert x[:, 0, 0].tolist() == list(colors[b.classes[int(y)]])
    assert sorted(b.test.y.tolist()) == [0, 1]
    assert len(b.mean) == 3 and all(0 <= m <= 1 for m in b.mean) and all(s > 0 for s in b.std)
    xb, _ = next(iter(data.batches(b.train, b, 4, shuffle=True, augment=b.augment)))
    assert tuple(xb.shape) == (4, 3, 8, 8)
    lim = data.load("imagefolder", str(tmp_path), image_size=8, val_fraction=0.0, limit=4)
    assert len(lim.train) == 4


def test_imagefolder_errors(tmp_path):
    with pytest.raises(PrunewiseError, match="train"):
        data.load("imagefolder", str(tmp_path))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(PrunewiseError, match="holds no images"):
        data.load("imagefolder", str(tmp_path))
    _write_png(tmp_path / "train" / "a" / "0.png", (1, 2, 3))
    _write_png(tmp_path / "train" / "a" / "1.png", (1, 2, 3))
    with pytest.raises(PrunewiseError, match="val"):
        data.load("imagefolder", str(tmp_path))  # val has no images
    _write_png(tmp_path / "val" / "b" / "0.png", (1, 2, 3))
    with pytest.raises(PrunewiseError, match="'b'"):
        data.load("imagefolder", str(tmp_path))  # class unknown to train
    (tmp_path / "val" / "b" / "0.png").unlink()
    (tmp_path / "val" / "b").rmdir()
    (tmp_path / "val" / "a" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(PrunewiseError, match="bad.png"):
        data.load("imagefolder", str(tmp_path))


def test_cifar_labels_must_be_integers(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"labels": [0.7, 1.2, 9.9, -0.4], b"data": rng.randint(0, 256, (4, 3072))
               .astype(np.uint8)}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(PrunewiseError, match="integer labels"):
        D.load("cifar10", tmp_path)


def test_image_sizes_are_bounded_by_what_memory_holds():
    with pytest.raises(PrunewiseError, match="use an image size of at most 772"):
        D.load("digits", image_size=1024)        # 1,797 images of 1024x1024: 1.8 GiB
    r = invoke("info", "resnet20", "--in-channels", "4096", "--input-size", "1024")
    assert_bad_input(r, "4096x1024x1024", "at most 32")
    r = invoke("info", "resnet20", "--input-size", "4096")
    assert_bad_input(r, "--input-size", "1024")


def test_an_idx_header_announcing_more_than_mnist_holds_is_refused(tmp_path):
    import gzip

    head = bytes([0, 0, 8, 3]) + (4_900_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(head + bytes(1000))
    labels = bytes([0, 0, 8, 1]) + (4_900_000).to_bytes(4, "big")
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(labels + bytes(100))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(bytes(16))
    with pytest.raises(PrunewiseError, match="at most 60000 items"):
        D.load("mnist", tmp_path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_that_declares_huge_pixels_is_refused_before_decoding(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("1", (13000, 13000)).save(tmp_path / split / "a" / "big.png")
    with pytest.raises(PrunewiseError, match="13000x13000"):
        D.load("imagefolder", tmp_path)


def test_tensors_splits_must_agree_and_a_given_val_split_must_not_be_empty():
    from prunewise.data.tensors import from_tensors

    y = torch.arange(40) % 4
    with pytest.raises(PrunewiseError, match=r"one shape and dtype.*test: \[1, 8, 8\]"):
        from_tensors((torch.rand(40, 1, 16, 16), y), (torch.rand(40, 1, 8, 8), y))
    with pytest.raises(PrunewiseError, match=r"one shape and dtype.*float64"):
        from_tensors((torch.rand(40, 3), y), (torch.rand(40, 3).double(), y))
    with pytest.raises(PrunewiseError, match="val split is empty"):
        from_tensors((torch.rand(40, 3), y), (torch.rand(40, 3), y),
                     (torch.rand(0, 3), y[:0]))
    b = from_tensors((torch.rand(40, 3), y), (torch.rand(40, 3), y))
    assert len(b.val) > 0
