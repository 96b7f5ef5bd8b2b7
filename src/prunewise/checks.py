"""The value checks every settings object runs once, when it is built.

Each raises :class:`~prunewise.errors.PrunewiseError` with a message that names the setting, the
value it got and what is allowed; each returns the value, so a ``__post_init__`` reads as a list
of ``checks.integer("attack steps", self.steps, 1)`` lines. No torch here: the command line
builds settings (and prints help) without importing it.
"""
from __future__ import annotations

import math
import re
from dataclasses import MISSING, field, fields
from typing import Any, Iterable

from .errors import PrunewiseError


#: The written forms a number may take on the command line and in lists: ASCII digits only, no
#: digit-group underscores (Python's ``float`` / ``int`` also take ``1_0`` and non-ASCII digits).
FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
INT_TEXT = re.compile(r"[+-]?[0-9]+")


def parse(what: str, text: str, *, integer: bool = False) -> float | int:
    """``text`` as a number written the way the help shows it (``0.9``, ``1e-8``, ``-3``);
    anything else (``0.9_5``, non-ASCII digits, ``inf``, ``nan``) is a PrunewiseError."""
    s = text.strip() if isinstance(text, str) else ""
    if not (INT_TEXT if integer else FLOAT_TEXT).fullmatch(s):
        kind = "an integer" if integer else "a number"
        raise PrunewiseError(f"{what}: {text!r} is not {kind} written with ASCII digits")
    return int(s) if integer else float(s)


def integer(what: str, value: Any, low: int, high: int | None = None, *,
            none: bool = False) -> Any:
    """An int (not a bool) in ``low .. high``; None passes when ``none``."""
    if value is None and none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        extra = " (or None)" if none else ""
        raise PrunewiseError(f"{what} must be an integer {span}{extra}, got {value!r}")
    return value


def number(what: str, value: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False, none: bool = False) -> Any:
    """A finite int or float (not a bool) between the bounds (``*_open``: the bound excluded);
    None passes when ``none``."""
    if value is None and none:
        return value
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
        span = f" with {lo}x{hi}" if lo or hi else ""
        raise PrunewiseError(f"{what} must be a finite number{span}, got {value!r}")
    return value


def fraction(what: str, value: Any, *, zero: bool = False, none: bool = False) -> Any:
    """A number in (0, 1), or [0, 1) with ``zero``."""
    return number(what, value, 0.0, 1.0, low_open=not zero, high_open=True, none=none)


def choice(what: str, value: Any, allowed: Iterable[str], *, none: bool = False) -> Any:
    """One of ``allowed`` (None too when ``none``)."""
    allowed = tuple(allowed)
    if value is None and none:
        return value
    if not isinstance(value, str) or value not in allowed:
        raise PrunewiseError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def flag(what: str, value: Any, *, none: bool = False) -> Any:
    """True or False (None too when ``none``)."""
    if not (isinstance(value, bool) or (value is None and none)):
        raise PrunewiseError(f"{what} must be True or False, got {value!r}")
    return value


def nm(what: str, value: Any) -> tuple[int, int]:
    """An N:M pattern as ``(n, m)`` from ``"2:4"`` or a pair: integers with 1 <= n < m <= 64."""
    given = value
    if isinstance(value, str):
        got = re.fullmatch(r"([0-9]+):([0-9]+)", value.strip())
        value = (int(got.group(1)), int(got.group(2))) if got else None
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or not 1 <= value[0] < value[1] <= 64:
        raise PrunewiseError(f"{what} must be an N:M pattern such as 2:4 (1 <= N < M <= 64), "
                             f"got {given!r}")
    return int(value[0]), int(value[1])


#: The largest count an integer setting takes (epochs, samples, batch sizes).
MAX_COUNT = 10 ** 9


def setting(default: Any, help: str, kind: str, **limits: Any) -> Any:
    """A settings field declared once: its ``default``, the ``help`` the command line and
    ``prunewise methods`` print, its ``kind`` ('float', 'int', 'choice' or 'flag') and
    ``limits``: ``low`` / ``high`` / ``low_open`` / ``high_open`` for numbers, ``choices`` for
    a choice, ``label`` (how an error names it; default the field's name). Kinds the command
    line also knows: 'patterns' (a tuple of non-empty layer-name patterns, a repeatable
    option) and 'path' (a file or folder name). None is allowed when the default is None;
    ``default=MISSING`` makes a required field. :func:`check_fields` checks a value against
    them; the command line builds its options from them."""
    meta = {"help": help, "kind": kind, **limits}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(obj: Any) -> None:
    """Check every field of the settings dataclass ``obj`` that :func:`setting` declared
    (raises PrunewiseError naming the setting, the value and what is allowed)."""
    for f in fields(obj):
        meta = f.metadata
        kind = meta.get("kind")
        if kind is None:
            continue
        value, what = getattr(obj, f.name), meta.get("label") or f.name.replace("_", " ")
        none = f.default is None or bool(meta.get("zero_is_none"))   # "0 = all" means None
        if kind == "int":
            integer(what, value, meta.get("low", -MAX_COUNT), meta.get("high"), none=none)
        elif kind == "float":
            number(what, value, meta.get("low"), meta.get("high"),
                   low_open=meta.get("low_open", False), high_open=meta.get("high_open", False),
                   none=none)
        elif kind == "choice":
            choice(what, value, meta["choices"], none=none)
        elif kind == "patterns":
            if isinstance(value, str) or not isinstance(value, (tuple, list)) \
                    or not all(isinstance(p, str) and p.strip() for p in value):
                raise PrunewiseError(f"{what} must be a tuple of non-empty layer-name patterns, "
                                     f"got {value!r}")
        elif kind == "nm":
            if value is not None:
                nm(what, value)
        elif kind == "path":
            if not (value is None and none) and (not isinstance(value, str) or not value):
                raise PrunewiseError(f"{what} must be a file or folder name, got {value!r}")
        else:
            flag(what, value, none=none)
