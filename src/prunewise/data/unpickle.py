"""The restricted unpickler for CIFAR batch files -- a security boundary, kept alone here.

A pickle is a program.  :func:`safe_unpickle` runs one only after two layers of checks:

1. **The opcode stream is validated first** (:func:`check_opcodes`, with
   :func:`pickletools.genops`, before any object is built).  The file size, the number of
   opcodes, the memo (its size and indices), the ``MARK`` nesting and the nesting depth of
   the objects built are bounded, and an upper bound on the total size of the result is
   computed, counting every shared reference (memo ``GET``, ``DUP``) as a fresh copy of the
   object it refers to and bytes/strings by their length.  This refuses shared-reference
   bombs: a tiny pickle whose list of labels is a list of lists of ... the same list, which a
   consumer such as ``np.asarray`` would expand into gigabytes.
2. **Only a handful of globals resolve**, each mapped to a checked stand-in rather than the
   real numpy function: arrays are rebuilt from their raw bytes with :func:`numpy.frombuffer`
   (simple numeric dtypes only, data length checked against the shape), never by passing an
   attacker's shape or state to numpy.  Everything else (``os.system``, ``builtins.eval``,
   object dtypes, ...) raises :class:`~prunewise.errors.PrunewiseError` before it can act.

Arrays returned are read-only views of the bytes in the file.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
from typing import Any

import numpy as np

from prunewise.errors import PrunewiseError

MAX_FILE_BYTES = 512 * 2**20  # CIFAR-100's training file, the largest, is about 160 MB
MAX_OPCODES = 2_000_000  # CIFAR-100's training file needs about 250,000
MAX_MEMO = 1 << 22  # memo entries and the largest memo index
MAX_DEPTH = 64  # MARK nesting and nesting depth of the objects built
MIN_UNITS = 1 << 20  # size bound allowed for any file ...
MAX_UNITS = 1 << 30  # ... growing by 2 per byte of file, up to this

_GOOD = "only numpy arrays and plain containers are allowed (the file is not a genuine CIFAR batch)"
_LATIN1 = ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1")
_PUT_OPS = ("PUT", "BINPUT", "LONG_BINPUT")
_GET_OPS = ("GET", "BINGET", "LONG_BINGET")
_IN_PLACE_OPS = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD")


class _Refused(Exception):
    """Internal: the opcode stream breaks a bound (turned into PrunewiseError with the path)."""


# --------------------------------------------------------------------------------------------
# 1. Opcode validation
# --------------------------------------------------------------------------------------------


class _Graph:
    """Abstract pickle machine: objects are node ids; a node's size is its own size plus the
    sizes of all its children, each counted in full however often it is shared."""

    def __init__(self) -> None:
        self.own: list[int] = []
        self.kids: list[list[int] | None] = []
        self.stack: list[int] = []
        self.marks: list[int] = []
        self.memo: dict[int, int] = {}

    def new(self, own: int, kids: list[int] | None) -> int:
        self.own.append(own)
        self.kids.append(kids or None)
        return len(self.own) - 1

    def pop(self, n: int) -> list[int]:
        if n > len(self.stack) - (self.marks[-1] if self.marks else 0):
            raise _Refused("stack underflow")
        if n == 0:
            return []
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def peek(self) -> int:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[int]:
        if not self.marks:
            raise _Refused("MARK missing")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def add_kids(self, node: int, items: list[int]) -> None:
        if items:
            kids = self.kids[node]
            if kids is None:
                self.kids[node] = list(items)
            else:
                kids.extend(items)


def _leaf_size(arg: Any) -> int:
    return max(1, len(arg)) if isinstance(arg, (bytes, bytearray, str)) else 1


def _step(g: _Graph, op: pickletools.OpcodeInfo, arg: Any) -> bool:
    """Apply one opcode to the abstract machine; True at STOP."""
    name, before = op.name, op.stack_before
    if name == "MARK":
        g.marks.append(len(g.stack))
        if len(g.marks) > MAX_DEPTH:
            raise _Refused(f"MARKs nest deeper than {MAX_DEPTH}")
    elif name == "STOP":
        if len(g.stack) != 1 or g.marks:
            raise _Refused("unbalanced stack at STOP")
        return True
    elif name == "MEMOIZE" or name in _PUT_OPS:
        key = len(g.memo) if name == "MEMOIZE" else int(arg)
        if not 0 <= key < MAX_MEMO or len(g.memo) >= MAX_MEMO:
            raise _Refused(f"memo index {key} is out of range (limit {MAX_MEMO})")
        g.memo[key] = g.peek()
    elif name in _GET_OPS:
        if int(arg) not in g.memo:
            raise _Refused(f"memo index {arg} was never stored")
        g.stack.append(g.memo[int(arg)])
    elif name == "DUP":
        g.stack.append(g.peek())
    elif name in _IN_PLACE_OPS:  # the container, below the items, grows in place
        items = g.pop_mark() if pickletools.markobject in before else g.pop(len(before) - 1)
        g.add_kids(g.peek(), items)
    else:
        items = g.pop_mark() if pickletools.markobject in before else g.pop(len(before))
        for _ in op.stack_after:
            g.stack.append(g.new(_leaf_size(arg), items))
    return False


def _total_size(g: _Graph, root: int, limit: int) -> int:
    """Size of ``root`` with every shared reference expanded (iterative, memoized per node);
    refuses a result over ``limit``, nested deeper than :data:`MAX_DEPTH`, or cyclic."""
    size = [0] * len(g.own)
    depth = [0] * len(g.own)
    state = bytearray(len(g.own))  # 0 new, 1 entered, 2 done
    todo = [(root, False)]
    while todo:
        node, leaving = todo.pop()
        kids = g.kids[node] or ()
        if leaving:
            total = g.own[node] + sum(size[k] for k in kids)
            depth[node] = 1 + max((depth[k] for k in kids), default=0)
            if total > limit:
                raise _Refused(f"its objects expand to more than {limit} elements (shared references counted in full)")
            if depth[node] > MAX_DEPTH:
                raise _Refused(f"its objects nest deeper than {MAX_DEPTH}")
            size[node], state[node] = total, 2
        elif state[node] == 1:
            raise _Refused("it builds a recursive (self-containing) structure")
        elif state[node] == 0:
            state[node] = 1
            todo.append((node, True))
            todo.extend((k, False) for k in kids if state[k] != 2)
    return size[root]


def check_opcodes(data: bytes) -> int:
    """Validate a pickle's opcode stream without building any object; returns the size bound.

    Raises :class:`_Refused` when a bound is broken and
    :class:`~prunewise.errors.PrunewiseError` when the stream is malformed (:func:`safe_unpickle`
    adds the file name to both).
    """
    limit = min(MAX_UNITS, MIN_UNITS + 2 * len(data))
    g = _Graph()
    count = 0
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if count > MAX_OPCODES:
                raise _Refused(f"it has more than {MAX_OPCODES} opcodes")
            if _step(g, op, arg):
                return _total_size(g, g.stack[0], limit)
    except ValueError as exc:  # genops: unknown opcode, truncated argument, no STOP, ...
        raise PrunewiseError(f"not a valid CIFAR batch pickle (ValueError: {exc})") from None
    raise _Refused("no STOP opcode")  # pragma: no cover - genops raises first


# --------------------------------------------------------------------------------------------
# 2. Checked stand-ins for the few globals numpy array pickles use
# --------------------------------------------------------------------------------------------


def _simple_dtype(spec: Any) -> np.dtype:
    if isinstance(spec, _DtypeSpec):
        return spec.dtype
    raise PrunewiseError(f"array dtype is a {type(spec).__name__}, not a pickled numpy dtype; {_GOOD}")


class _DtypeSpec:
    """Stands in for ``numpy.dtype(obj, align, copy)``: plain numeric dtypes only."""

    def __init__(self, obj: Any, align: Any = False, copy: Any = False):
        if isinstance(obj, bytes):
            obj = obj.decode("ascii", "replace")
        if not isinstance(obj, str) or len(obj) > 8:
            raise PrunewiseError(f"dtype {obj!r} is not a plain numeric dtype; {_GOOD}")
        try:
            dtype = np.dtype(obj)
        except TypeError:
            raise PrunewiseError(f"dtype {obj!r} is unknown to numpy; {_GOOD}") from None
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise PrunewiseError(f"dtype {obj!r} is not a plain numeric dtype; {_GOOD}")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise PrunewiseError(f"dtype state {state!r:.80} is not that of a plain numeric dtype; {_GOOD}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "=", "|"):
            raise PrunewiseError(f"dtype byte order {order!r} is invalid")
        if order != "|":
            self.dtype = self.dtype.newbyteorder(order)


def _shape(shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise PrunewiseError(f"array shape {shape!r:.80} is invalid")
    return shape


def _array(buf: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if isinstance(buf, str):  # Python 2 str data read as text
        buf = buf.encode("latin1")
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise PrunewiseError(f"array data is a {type(buf).__name__}, not raw bytes; {_GOOD}")
    want = math.prod(shape) * dtype.itemsize
    have = memoryview(buf).nbytes
    if have != want:
        raise PrunewiseError(f"array data holds {have} bytes but shape {shape} of {dtype} needs {want}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


class _ArraySpec:
    """Stands in for the empty array ``numpy...._reconstruct`` makes; its state becomes the array."""

    def __init__(self) -> None:
        self.array = np.empty(0, dtype=np.uint8)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise PrunewiseError(f"array state is not (shape, dtype, fortran, data); {_GOOD}")
        shape, dtype, fortran, raw = state
        self.array = _array(raw, _simple_dtype(dtype), _shape(shape), "F" if fortran else "C")


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` (only as the first argument of ``_reconstruct``)."""


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArraySpec:
    if not isinstance(subtype, _NdarrayType) or math.prod(_shape(shape)) != 0:
        raise PrunewiseError(f"array reconstruction with {subtype!r:.40} / shape {shape!r:.40} is refused; {_GOOD}")
    return _ArraySpec()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    order = order.decode("ascii", "replace") if isinstance(order, bytes) else order
    if order not in ("C", "F", "A"):
        raise PrunewiseError(f"array order {order!r:.20} is invalid")
    return _array(buf, _simple_dtype(dtype), _shape(shape), "F" if order == "F" else "C")


def _encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as Python-3 pickles of bytes use it: a str to latin-1 only."""
    if not isinstance(obj, str) or encoding not in _LATIN1 or errors != "strict":
        raise PrunewiseError(f"_codecs.encode(..., {encoding!r:.20}) is refused; only latin-1 text is allowed")
    return obj.encode("latin1")


_NDARRAY = _NdarrayType()
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
    ("_codecs", "encode"): _encode,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    # Protocol-5 array pickles (numpy >= 1.16) rebuild arrays from a raw buffer this way.
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
}


def _resolve(obj: Any, seen: dict[int, Any]) -> Any:
    """Replace array stand-ins by their arrays inside dicts, lists and tuples (depth is bounded
    by :func:`check_opcodes`, and shared objects are visited once)."""
    if isinstance(obj, _ArraySpec):
        return obj.array
    kind = type(obj)
    if kind not in (dict, list, tuple):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    if kind is list:
        seen[id(obj)] = obj
        obj[:] = [_resolve(v, seen) for v in obj]
    elif kind is dict:
        seen[id(obj)] = obj
        items = [(_resolve(k, seen), _resolve(v, seen)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    else:
        seen[id(obj)] = tuple(_resolve(v, seen) for v in obj)
    return seen[id(obj)]


# --------------------------------------------------------------------------------------------
# 3. The unpickler
# --------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in the allow-list, to checked stand-ins.

    Anything else (``os.system``, ``builtins.eval``, ...) raises :class:`PrunewiseError`
    before it can be called.  Use :func:`safe_unpickle`, which also validates the opcodes.
    """

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        entry = _ALLOWED.get((module, name))
        if entry is None:
            raise PrunewiseError(f"{self._path}: refusing to load global '{module}.{name}' from this pickle; {_GOOD}")
        return entry

    def persistent_load(self, pid: Any) -> Any:
        raise PrunewiseError(f"{self._path}: persistent ids are not allowed in a CIFAR batch file")


def _read_bounded(path: str) -> bytes:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise PrunewiseError(
                f"{path}: file is {size} bytes, over the {MAX_FILE_BYTES} byte limit for a CIFAR batch pickle")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PrunewiseError(f"{path}: file is over the {MAX_FILE_BYTES} byte limit for a CIFAR batch pickle")
    return data


def safe_unpickle(path: str) -> Any:
    """Load the pickle at ``path`` under the bounds and allow-list described in this module."""
    try:
        data = _read_bounded(path)
        check_opcodes(data)
        return _resolve(RestrictedUnpickler(io.BytesIO(data), path).load(), {})
    except PrunewiseError as exc:
        msg = str(exc)
        raise PrunewiseError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except _Refused as exc:
        raise PrunewiseError(f"{path}: refusing this pickle: {exc}; {_GOOD}") from None
    except OSError as exc:
        raise PrunewiseError(f"{path}: cannot read CIFAR batch file ({exc.strerror or exc})") from None
    except Exception as exc:  # UnpicklingError, EOFError, bad numpy state, MemoryError, ...
        raise PrunewiseError(f"{path}: not a valid CIFAR batch pickle ({type(exc).__name__}: {exc})") from None

