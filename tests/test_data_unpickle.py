"""Tests for the restricted unpickler's bounds (CIFAR batch files are pickles)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prunewise.data import unpickle
from prunewise.errors import PrunewiseError

TESTS = os.path.dirname(os.path.abspath(__file__))  # for helpers.py in subprocess scripts


def _bomb(levels=5, width=100) -> dict:
    """A label list of ``width ** levels`` entries made of shared references (about 1 KB)."""
    labels = [0] * width
    for _ in range(levels - 1):
        labels = [labels] * width
    return {b"labels": labels}


def _refused(path) -> str:
    with pytest.raises(PrunewiseError) as info:
        unpickle.safe_unpickle(str(path))
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_shared_reference_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb"
    path.write_bytes(pickle.dumps(_bomb(), protocol=2))
    assert path.stat().st_size < 1500
    assert "expand to more than" in _refused(path)  # refused while reading, before expanding


def test_bomb_refused_with_bounded_memory(tmp_path):
    """The whole CIFAR load runs in a subprocess whose address space may grow by only 1 GB; the
    same bomb unpickled without the checks does run out of memory there (so the test bites)."""
    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"data": rng.randint(0, 256, (2, 3072)).astype(np.uint8), b"labels": [0, 1]}
        if name == "data_batch_3":
            obj[b"labels"] = _bomb()[b"labels"]
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    script = textwrap.dedent(f"""
        import pickle, sys
        import numpy as np
        from prunewise import data
        from prunewise.errors import PrunewiseError
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import limit_address_space
        limit_address_space()
        try:
            data.load("cifar10", {str(folder)!r})
        except PrunewiseError as exc:
            print("REFUSED", exc)
        try:
            labels = pickle.loads(open({str(folder / 'data_batch_3')!r}, "rb").read())[b"labels"]
            np.asarray(labels, dtype=np.int64)
            print("UNGUARDED-LOADED")
        except MemoryError:
            print("UNGUARDED-MEMORYERROR")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, env=env)  # a hang guard
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and "data_batch_3" in done.stdout and "expand" in done.stdout
    assert "UNGUARDED-MEMORYERROR" in done.stdout


def test_other_bounds(tmp_path, monkeypatch):
    path = tmp_path / "p"
    deep: list = [0]
    for _ in range(200):
        deep = [deep]
    path.write_bytes(pickle.dumps(deep, protocol=2))
    assert "nest deeper" in _refused(path)
    path.write_bytes(b"(" * 100 + b".")  # MARKs nested 100 deep
    assert "MARK" in _refused(path)
    cyclic: list = []
    cyclic.append(cyclic)
    path.write_bytes(pickle.dumps(cyclic, protocol=2))
    assert "recursive" in _refused(path)
    path.write_bytes(b"\x80\x02]r\xff\xff\xff\x7f.")  # LONG_BINPUT at index 2**31 - 1
    assert "memo index" in _refused(path)
    path.write_bytes(b"\x80\x02h\x05.")  # BINGET of a memo entry never stored
    assert "never stored" in _refused(path)
    path.write_bytes(pickle.dumps(list(range(1000)), protocol=2))
    monkeypatch.setattr(unpickle, "MAX_OPCODES", 100)
    assert "opcodes" in _refused(path)
    monkeypatch.setattr(unpickle, "MAX_FILE_BYTES", 100)
    assert "byte limit" in _refused(path)


def test_array_stand_ins(tmp_path):
    path = tmp_path / "p"
    for proto in (2, 4, 5):
        arr = np.arange(12, dtype="<i4").reshape(3, 4)
        obj = {b"data": arr, b"f": np.asfortranarray(arr.astype(">f8")), b"l": [1, 2]}
        path.write_bytes(pickle.dumps(obj, protocol=proto))
        out = unpickle.safe_unpickle(str(path))
        assert type(out[b"data"]) is np.ndarray and np.array_equal(out[b"data"], arr)
        assert np.array_equal(out[b"f"], arr) and out[b"l"] == [1, 2]
    path.write_bytes(pickle.dumps(np.array([object()], dtype=object), protocol=2))
    assert "numeric dtype" in _refused(path)
    path.write_bytes(pickle.dumps(np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]), protocol=2))
    assert "numeric dtype" in _refused(path)
    # numpy.ndarray called directly with a huge shape, and _reconstruct with a huge shape
    path.write_bytes(b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85R.")
    assert "not a valid CIFAR batch" in _refused(path)
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                     b"J\x00\x00\x00\x40\x85U\x01b\x87R.")
    assert "refused" in _refused(path)
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    assert "latin-1" in _refused(path)
