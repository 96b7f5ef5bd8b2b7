"""Tests for the IDX (MNIST / Fashion-MNIST) reader; tiny IDX files are built in tmp_path."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from prunewise import data
from prunewise.data import idx as idx_mod
from prunewise.errors import PrunewiseError

N_TRAIN, N_TEST = 120, 20


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def _write(path, payload: bytes, gz: bool):
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _fake_set(folder, gz=False, n_train=N_TRAIN, n_test=N_TEST, side=28, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, side, side)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, side, side)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, arr in arrays.items():
        _write(folder / stem, _idx_bytes(arr), gz)
    return {k: np.asarray(v, dtype=np.uint8) for k, v in arrays.items()}


def _err(fn, *args, **kw) -> str:
    with pytest.raises(PrunewiseError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads_tiny_set(tmp_path, gz):
    raw = _fake_set(tmp_path, gz=gz)
    b = data.load("mnist", tmp_path, seed=7)  # seed does not move the fixed split
    # one in twelve of the 120 training images is held out: 110 / 10, stratified (1 per class)
    assert (len(b.train), len(b.val), len(b.test)) == (110, 10, N_TEST)
    assert sorted(b.val.y.tolist()) == list(range(10))
    assert tuple(b.train.x.shape[1:]) == (1, 32, 32) and b.train.x.dtype == torch.uint8
    assert b.image_size == 32 and b.in_channels == 1 and b.num_classes == 10
    assert b.augment == {"crop_padding": 4, "hflip": False}
    # zero padding by 2, pixels unchanged inside
    images = torch.from_numpy(raw["train-images-idx3-ubyte"])
    for s in (b.train, b.val):
        assert torch.equal(s.x[:, 0, 2:30, 2:30], images[s.index])
        assert int(s.x[:, :, :2].abs().sum()) == 0 and int(s.x[:, :, :, 30:].abs().sum()) == 0
        assert s.y.tolist() == (s.index % 10).tolist()
    assert set(b.train.index.tolist()).isdisjoint(b.val.index.tolist())
    assert torch.equal(b.test.x[:, 0, 2:30, 2:30], torch.from_numpy(raw["t10k-images-idx3-ubyte"]))
    assert b.test.index.tolist() == list(range(N_TEST))
    # statistics from the training split
    expect_mean = b.train.x.double().div(255).mean().item()
    assert abs(b.mean[0] - expect_mean) < 1e-5
    other = data.load("mnist", tmp_path, seed=0)
    assert torch.equal(other.val.index, b.val.index) and torch.equal(other.train.index, b.train.index)


def test_idx_limit_truncates_train_only_and_fashion_flips(tmp_path):
    _fake_set(tmp_path)
    full = data.load("fashion-mnist", tmp_path)
    lim = data.load("fashion-mnist", tmp_path, limit=30)
    assert len(lim.train) == 30 and torch.equal(lim.train.index, full.train.index[:30])
    assert torch.equal(lim.val.index, full.val.index) and len(lim.test) == N_TEST
    assert lim.augment["hflip"] is True and full.classes[0] == "T-shirt/top"
    assert tuple(data.load("mnist", tmp_path, image_size=16).train.x.shape[1:]) == (1, 16, 16)


def test_idx_val_size_small_sets():
    assert data.IDX_VAL_SIZE == 5000
    assert idx_mod.idx_val_size(60000) == 5000 and idx_mod.idx_val_size(120) == 10
    assert idx_mod.idx_val_size(100_000) == 5000 and idx_mod.idx_val_size(11) == 0
    # exactly n // 12 also where the fraction (n // 12) / n would round up by one
    labels = np.arange(86) % 10
    keep, held = idx_mod.split_pool(labels, 0.0, 0, "t", count=idx_mod.idx_val_size(86))
    assert len(held) == 7 and len(keep) == 79


def test_idx_tiny_pool_has_no_val(tmp_path):
    _fake_set(tmp_path, n_train=11, n_test=3)
    b = data.load("mnist", tmp_path)
    assert (len(b.train), len(b.val), len(b.test)) == (11, 0, 3)


def test_read_idx_plain_and_gz(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain = _write(tmp_path / "a", _idx_bytes(arr), gz=False)
    gz = _write(tmp_path / "b", _idx_bytes(arr), gz=True)
    assert np.array_equal(data.read_idx(str(plain), 3), arr)
    assert np.array_equal(data.read_idx(str(gz), 3), arr)


def _bad(tmp_path, payload: bytes, ndim=3, gz=False, name="f"):
    path = _write(tmp_path / name, payload, gz)
    msg = _err(data.read_idx, str(path), ndim)
    assert str(path) in msg
    return msg


def test_read_idx_errors(tmp_path):
    good = _idx_bytes(np.zeros((2, 3, 3)))
    assert "magic" in _bad(tmp_path, b"\x08\x00\x08\x03" + good[4:])
    assert "magic" in _bad(tmp_path, b"\x00\x00\x0d\x03" + good[4:])  # float32 data
    assert "1 dimension" in _bad(tmp_path, _idx_bytes(np.zeros(5)), ndim=3)
    assert "3 dimension" in _bad(tmp_path, good, ndim=1)
    assert "out of range" in _bad(tmp_path, bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + good[8:])
    assert "out of range" in _bad(tmp_path, bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big")
                                  + (5000).to_bytes(4, "big") + (3).to_bytes(4, "big"))
    huge = bytes([0, 0, 8, 3]) + (10_000_000).to_bytes(4, "big") + (4096).to_bytes(4, "big") * 2
    assert "out of range" in _bad(tmp_path, huge)
    assert "out of range" in _bad(tmp_path, huge, gz=True)
    assert "truncated" in _bad(tmp_path, good[:-1])
    assert "truncated" in _bad(tmp_path, good[:-1], gz=True)
    assert "longer" in _bad(tmp_path, good + b"\x00")
    assert "longer" in _bad(tmp_path, good + b"\x00", gz=True)
    assert "header is truncated" in _bad(tmp_path, good[:9])
    assert "too short" in _bad(tmp_path, b"\x00\x00")
    assert "too short" in _bad(tmp_path, b"", gz=True)
    corrupt = bytearray(gzip.compress(good))
    corrupt[12:20] = b"\xff" * 8  # damaged deflate stream
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(corrupt))
    msg = _err(data.read_idx, str(path), 3)
    assert str(path) in msg and "cannot read IDX file" in msg
    path.write_bytes(b"not gzip at all")
    assert "cannot read IDX file" in _err(data.read_idx, str(path), 3)
    path.write_bytes(gzip.compress(good)[:-6])  # gzip stream cut short
    assert "cannot read IDX file" in _err(data.read_idx, str(path), 3)


def test_idx_set_errors(tmp_path):
    raw = _fake_set(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(raw["train-labels-idx1-ubyte"][:-1]))
    msg = _err(data.load, "mnist", tmp_path)
    assert "train-images-idx3-ubyte" in msg and str(labels) in msg and "119 labels" in msg
    bad = raw["train-labels-idx1-ubyte"].copy()
    bad[5] = 10
    labels.write_bytes(_idx_bytes(bad))
    msg = _err(data.load, "mnist", tmp_path)
    assert str(labels) in msg and "label 10" in msg and "0..9" in msg
    labels.write_bytes(_idx_bytes(raw["train-labels-idx1-ubyte"]))
    test_images = tmp_path / "t10k-images-idx3-ubyte"
    test_images.write_bytes(_idx_bytes(np.zeros((N_TEST, 27, 27))))
    msg = _err(data.load, "mnist", tmp_path)
    assert str(test_images) in msg and "(28, 28)" in msg and "(27, 27)" in msg
    test_images.unlink()
    msg = _err(data.load, "fashion-mnist", tmp_path)
    assert "t10k-images-idx3-ubyte" in msg and "dataset-fashion-mnist" in msg and "--root" in msg
    msg = _err(data.load, "mnist", tmp_path / "nope")
    assert "nope" in msg and "not found" in msg and "--root" in msg
    msg = _err(data.load, "mnist")
    assert "mnist" in msg and "--root" in msg


def test_fashion_default_root(monkeypatch, tmp_path):
    monkeypatch.setitem(data.IDX_SETS, "fashion-mnist",
                        (str(tmp_path / "missing"),) + data.IDX_SETS["fashion-mnist"][1:])
    msg = _err(data.load, "fashion-mnist")
    assert "missing" in msg and "apt-get install dataset-fashion-mnist" in msg
