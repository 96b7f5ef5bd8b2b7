"""Option types and option groups of the command line, and the checks that run before any work.

Nothing here imports torch: ``prunewise --help`` and every ``--help`` are answered from click,
the method table and the fixed names alone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
from pathlib import Path

import click

from .. import checks, methods, names, schema
from ..errors import PrunewiseError
from ..settings import Measurement


class FiniteFloat(click.ParamType):
    """A click FLOAT that refuses NaN and infinities and, optionally, values outside a range
    (``min_open`` / ``max_open``: the bound itself is excluded)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        lo = "" if self.min is None else f"{self.min:g} {'<' if self.min_open else '<='} "
        hi = "" if self.max is None else f" {'<' if self.max_open else '<='} {self.max:g}"
        return f"{lo}x{hi}"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not checks.FLOAT_TEXT.fullmatch(value.strip()):
            self.fail(f"{value!r} is not a number (ASCII digits, e.g. 0.9 or 1e-8)", param, ctx)
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, bool) or not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.min is not None and (v < self.min or (self.min_open and v == self.min))
        high = self.max is not None and (v > self.max or (self.max_open and v == self.max))
        if low or high:
            self.fail(f"{value!r} is not in the range {self.describe()}", param, ctx)
        return v


class MethodChoice(click.ParamType):
    """A method name of one kind (None: of either kind), checked against the method table when
    the command runs (a row added to the table is a choice at once; the help lists the table's
    names)."""

    def __init__(self, kind: str | None):
        self.kind = kind
        self.name = f"{kind or 'any'} method"

    def choices(self) -> list[str]:
        kinds = [self.kind] if self.kind else list(methods.KINDS)
        return list(dict.fromkeys(n for k in kinds for n in methods.names(k)))

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices()) + "]"

    def convert(self, value, param, ctx):
        if value not in self.choices():
            self.fail(f"{value!r} is not one of: {', '.join(self.choices())}", param, ctx)
        return value


class Integer(click.IntRange):
    """A click integer range that takes only ASCII digits (``int`` also reads ``1_0``, ``'１'``
    and other scripts' digits)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not checks.INT_TEXT.fullmatch(value.strip()):
            self.fail(f"{value!r} is not an integer (ASCII digits)", param, ctx)
        return super().convert(value, param, ctx)


MAX_COUNT = checks.MAX_COUNT
SEED = Integer(0, 2 ** 32 - 1)
SIDE = Integer(1, schema.MAX_IMAGE_SIZE)
CLASSES = Integer(1, schema.MAX_CLASSES)
FRACTION = FiniteFloat(0, 1, min_open=True, max_open=True)


def count(low: int) -> click.IntRange:
    """An integer option in ``low .. MAX_COUNT``."""
    return Integer(low, MAX_COUNT)


def check_output(path, what: str = "--out", *, folder: bool = True) -> Path:
    """Refuse, before any work, an output path that cannot be written: empty, an existing file
    where a folder is wanted (or the reverse), under a file, or where we may not write."""
    text = "" if path is None else str(path)
    kind = "folder" if folder else "file"
    if not text.strip() or "\0" in text:
        raise PrunewiseError(f"{what} must name a {kind}, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PrunewiseError(f"{what} {text.encode('utf-8', 'replace').decode()!r}: the name is "
                             f"not valid UTF-8; give a name that is") from None
    p = Path(text)
    _check_lengths(p, Path(p.anchor or "."), what)   # before any call a long name would fail
    for part in [p, *p.parents]:
        if os.path.islink(part) and not part.exists():
            raise PrunewiseError(f"{what} {p}: {part} is a symbolic link to nothing (dangling, "
                                 f"or a loop); remove it or give another path")
    if p.exists() and p.is_dir() != folder:
        raise PrunewiseError(f"{what} {p} is {'a file' if folder else 'a folder'}; give a {kind}")
    at = p if (folder and p.is_dir()) else p.parent
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        raise PrunewiseError(f"{what} {p} lies under {at}, which is not a folder")
    if not os.access(at, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PrunewiseError(f"{what} {p} is not writable (no write permission on {at})")
    _check_lengths(p, at, what)   # this file system's own limits
    _probe(at, p, what)
    return p


def _check_lengths(p: Path, at: Path, what: str) -> None:
    """Every name still to be made under ``at`` fits the file system's limit on one name, and
    the whole path its limit on a path (as bytes: the limits count bytes)."""
    try:
        most, longest = os.pathconf(at, "PC_NAME_MAX"), os.pathconf(at, "PC_PATH_MAX")
    except (OSError, ValueError):
        most, longest = 255, 4096
    for part in p.parts:
        size = len(part.encode("utf-8"))
        if size > most:
            raise PrunewiseError(f"{what}: the name {part[:40]!r}... is {size} bytes; this file "
                                 f"system allows {most} per name")
    full = len(str(p.absolute()).encode("utf-8")) + 64   # room for the files written inside
    if full > longest:
        raise PrunewiseError(f"{what} {str(p)[:60]}...: the path is too long for this file "
                             f"system ({full - 64} bytes, at most {longest - 64} here)")


def _probe(at: Path, p: Path, what: str) -> None:
    """Create and remove a file in ``at``, the nearest folder that exists: permissions say yes
    to root everywhere, but /proc, /sys, a read-only mount or a full disk still refuse."""
    import tempfile

    before = os.stat(at)
    try:
        fd, name = tempfile.mkstemp(prefix=".prunewise-probe-", dir=at)
    except OSError as e:
        raise PrunewiseError(f"{what} {p} cannot be written: creating a file in {at} failed "
                             f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)
    try:   # the folder as it was: a refused command changes nothing, its time included
        os.utime(at, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass


#: The lock file a command holds in its output folder while it runs.
LOCK = ".prunewise.lock"


@contextlib.contextmanager
def out_lock(path, what: str = "--out"):
    """Hold ``path`` (a folder, made if missing) for one command: a second command given the
    same folder meanwhile is refused at once, naming the holder's process id. A lock left by
    a process that no longer runs is taken over. On exit the lock goes, and so do the folders
    this made if nothing was written into them. Under torchrun rank 0 holds it for all."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    folder, made = Path(path), []
    at = folder
    while not at.exists() and at != at.parent:
        made.append(at)
        at = at.parent
    folder.mkdir(parents=True, exist_ok=True)
    before = (os.stat(folder), sorted(os.listdir(folder)))
    lock = folder / LOCK
    try:
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _holder(lock)
                if holder is not None and _alive(holder):
                    raise PrunewiseError(f"{what} {folder} is in use by another prunewise run "
                                         f"(process {holder}); wait for it to end or give "
                                         f"another {what}") from None
                lock.unlink(missing_ok=True)   # its process is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            break
        else:
            raise PrunewiseError(f"{what} {folder}: could not take its lock {lock}")
    except BaseException:
        _remove_made(made)
        raise
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        _remove_made(made)
        if folder.is_dir() and sorted(os.listdir(folder)) == before[1]:
            try:   # nothing written (a refused command): the folder's times as they were
                os.utime(folder, ns=(before[0].st_atime_ns, before[0].st_mtime_ns))
            except OSError:
                pass


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text()[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_made(made: list) -> None:
    for m in made:   # deepest first; only what is still empty
        try:
            m.rmdir()
        except OSError:
            break


def holds_out(fn):
    """A command decorator: the command's ``out`` folder checked (:func:`check_output`) and
    held (:func:`out_lock`) while it runs."""
    @functools.wraps(fn)
    def run(*args, **kw):
        out = kw.get("out")
        if out is None:
            return fn(*args, **kw)
        check_output(out)
        if kw.get("checkpoint") is not None:
            check_apart(out, kw["checkpoint"])
        with out_lock(out):
            return fn(*args, **kw)
    return run


def check_apart(out, checkpoint) -> None:
    """Refuse a prune ``--out`` that is the input checkpoint's folder, lies inside it, or whose
    ``model`` folder is it (symbolic links followed): the run would write its files among, or
    its pruned model over, the only copy of the model it started from."""
    if not Path(checkpoint).is_dir():   # also false for a symlink loop, which resolve() rejects
        return
    source, target = Path(checkpoint).resolve(), Path(out).resolve()
    if target == source or source in target.parents or target / "model" == source:
        raise PrunewiseError(f"--out {out} would write into the input checkpoint {checkpoint}; "
                             f"choose an --out folder outside it")


def progress_on(quiet: bool) -> bool:
    """Progress unless --quiet: a bar on a terminal, a line every few seconds in a log."""
    return not quiet


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars or chatter.")


def device_option(f):
    """--device, on every command that computes."""
    return click.option("--device", "device_name", default="auto", show_default=True,
                        help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")(f)


def amp_option(f):
    """--amp, on every command that trains or fine-tunes."""
    return click.option("--amp", type=click.Choice(names.AMP), default=None,
                        help="Mixed-precision training / fine-tuning on CUDA (fp16 with a "
                             "gradient scaler); pruning criteria stay float32.")(f)


def data_options(f):
    """--data/--root/--image-size/--data-seed, shared by every command that reads data."""
    f = click.option("--seq-len", type=Integer(2, 1 << 16), default=None,
                     help="Text: tokens per sequence (default: the checkpoint's, else 128).")(f)
    f = click.option("--data-seed", type=SEED, default=None,
                     help="Seed of the train/val split (default: the checkpoint's, else 0).")(f)
    f = click.option("--image-size", type=SIDE, default=None,
                     help="Resize images to this side (default: the data set's own).")(f)
    f = click.option("--root", type=click.Path(), default=None,
                     help="Folder of a local data set (cifar10, cifar100, imagefolder, mnist; "
                          "fashion-mnist defaults to /usr/share/datasets/fashion-mnist), or "
                          "the .safetensors file of --data tensors or tokens, or the .txt "
                          "file or folder of --data text.")(f)
    f = click.option("--data", "data_name", default=None,
                     help=f"Data set: {', '.join(names.DATASETS)} (default: the checkpoint's, "
                          f"else digits).")(f)
    return f


def model_option(f):
    """--model FACTORY: a model of the user's own (every command that reads a checkpoint)."""
    return click.option(
        "--model", "factory", default=None, metavar="FILE.py:FUNCTION",
        help="Your own model: FILE.py:FUNCTION or package.module:FUNCTION, a function that "
             "takes no arguments and returns the (dense) nn.Module, or hf:DIR, a HuggingFace "
             "causal LM folder (read offline). CHECKPOINT is then a checkpoint folder of that "
             "model, a .safetensors state dict, or the HuggingFace folder itself.")(f)


def _field_type(meta: dict):
    """The click type of a settings field: its kind and limits, as declared."""
    kind = meta.get("kind")
    if kind == "choice":
        return click.Choice(list(meta["choices"]))
    if kind == "path":
        return click.Path()
    if kind == "nm":
        return click.STRING
    if kind == "int":
        return Integer(0 if meta.get("zero_is_none") else meta.get("low"), meta.get("high"))
    return FiniteFloat(meta.get("low"), meta.get("high"), min_open=meta.get("low_open", False),
                       max_open=meta.get("high_open", False))


def dest(flag: str) -> str:
    """The keyword a click option's value arrives under: ``--finetune-batch-size`` ->
    ``finetune_batch_size``, ``--repair/--no-repair`` -> ``repair``."""
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def settings_options(cls: type, defaults=None, *, only=None, unset: bool = False):
    """One option per field in ``cls.OPTIONS`` (:mod:`prunewise.settings`; ``only``: some of
    them), typed, limited and documented by the field's declaration; its default is
    ``defaults``' value (default: the class's own), so no default is written twice. ``unset``:
    every option defaults to None (the settings' default then applies; a command can tell
    which were given), the help still shows the settings' default."""
    fields = cls.__dataclass_fields__

    def add(f):
        for name, flag in reversed([(n, fl) for n, fl in cls.OPTIONS.items()
                                    if only is None or n in only]):
            meta = fields[name].metadata
            value = (getattr(defaults, name) if defaults is not None
                     else fields[name].default)
            value = None if value is dataclasses.MISSING else value
            words = meta.get("help", name)
            kw = {"help": words[:1].upper() + words[1:] + "."}
            if meta.get("kind") == "patterns":
                kw.update(multiple=True, metavar="PATTERN")
            else:
                if meta.get("kind") != "flag":
                    kw["type"] = _field_type(meta)
                kw["default"] = None if unset else value
                kw["show_default"] = (str(value) if unset and value is not None
                                      else value is not None)
            f = click.option(flag, dest(flag), **kw)(f)
        return f
    return add


def settings_from(cls: type, kw: dict, defaults=None, *, only=None, **fixed):
    """The settings ``cls`` from a command's keyword arguments (the options
    :func:`settings_options` made, taken out of ``kw``), on top of ``defaults`` and ``fixed``;
    an option left unset (None, or no pattern) keeps the settings' default, and a count whose
    field says so turns 0 into None ('all')."""
    fields = cls.__dataclass_fields__
    given = {}
    for name, flag in cls.OPTIONS.items():
        if only is not None and name not in only:
            continue
        value = kw.pop(dest(flag))
        if isinstance(value, tuple):
            value = value or None
        if value is None:
            continue
        if fields[name].metadata.get("zero_is_none") and value == 0:
            value = None
        given[name] = value
    if defaults is not None:
        return dataclasses.replace(defaults, **fixed, **given)
    return cls(**fixed, **given)


def latency_option(defaults: Measurement = Measurement()):
    """--latency-repeats N (0: no latency), default ``defaults.repeats``."""
    meta = Measurement.__dataclass_fields__["repeats"].metadata
    return click.option("--latency-repeats", type=count(0), default=defaults.repeats,
                        show_default=True, help=meta["help"][:1].upper() + meta["help"][1:] + ".")


def measurement_of(kw: dict, defaults: Measurement = Measurement()) -> Measurement:
    """The measurement settings of --latency-repeats."""
    return defaults.with_repeats(kw.pop("latency_repeats"))


def method_options(row: methods.Method, given: dict):
    """The method's own settings from the command line: ``given`` maps every method-specific
    option (by setting name) to its value, or to None where the user did not give it. One given
    for a method without that setting is refused, naming the methods that have it."""
    from dataclasses import fields

    own = {f.name for f in fields(row.settings)}
    owners = methods.setting_names()
    for key, value in given.items():
        if value is not None and key not in own:
            flag = "--" + key.replace("_", "-")
            raise PrunewiseError(f"{flag} applies to method {', '.join(owners.get(key, []))} "
                                 f"only, not '{row.name}'")
    if not own:
        return None
    return row.settings(**{k: v for k, v in given.items() if k in own and v is not None})


def compute_of(device_name: str, amp: str | None = None):
    """Resolve --device / --amp, join the torchrun process group when launched by torchrun,
    and silence the standard output of every rank but 0 (one copy of every printed line)."""
    from .. import device, dist
    from ..pipeline import runs

    dev = device.resolve(device_name)
    device.check_amp(amp, dev)
    if dist.init(dev) and not dist.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of the process
    return runs.Compute(device=str(dev), amp=amp)


def _setting_option(f):
    """One click option for a method setting (a field made by ``methods.setting``)."""
    meta, flag = f.metadata, "--" + f.name.replace("_", "-")
    owners = ", ".join(methods.setting_names()[f.name])
    default = "" if f.default is None else f"; default {f.default}"
    words = meta.get("help", f.name)
    text = f"{words[:1].upper()}{words[1:]} ({owners} only{default})."
    if meta.get("kind") == "flag":
        return click.option(flag, f.name, is_flag=True, default=None, help=text)
    return click.option(flag, f.name, type=_field_type(meta), default=None, help=text)


def method_setting_options(kind: str):
    """Every method-specific setting of ``kind``'s methods as an option (None when not given;
    :func:`method_options` sorts them out for the chosen method)."""
    def add(f):
        for fld in reversed(list(methods.setting_fields(kind).values())):
            f = _setting_option(fld)(f)
        return f
    return add


def pop_method_options(kind: str, kw: dict) -> dict:
    """Take the method-specific options out of a command's keyword arguments."""
    return {name: kw.pop(name) for name in methods.setting_fields(kind)}
