"""A latency model of the user's device for structured pruning (docs/methods.md, "Latency
budgets"): what a configuration of channel counts will cost in time, without pruning it.

* **Layers** (:func:`build`): every conv / linear layer the channel groups shrink is timed on
  its own, at batch size ``batch`` and with its real input shape, on a grid of kept input and
  output widths (:data:`FRACTIONS` of each; whole groups of a grouped conv; a depthwise conv's
  input is its output), warm-up passes first, the median of ``repeats``.
* **The rest** (norms, activations, additions, pooling, Python): the whole dense model is timed
  too, and a configuration's latency is predicted as ``rest x volume + sum of its layers'
  times``, each layer's time interpolated on its grid, ``volume`` the fraction of the timed
  layers' output values the configuration keeps (norms, activations and additions work on
  those). Fixed costs do not shrink, so the prediction errs on the fast side; the search
  measures every candidate and corrects it.
* **Key and cache** (:func:`cached`): a table is keyed by the device, the thread count, the
  batch size, the dtype, torch's version and every timed layer's shapes; it is saved as JSON
  and reused only by a run with the same key (any other is measured again, never reused).

:meth:`Table.predict` takes the cost model's per-layer widths for a configuration
(:class:`prunewise.structured.surgery.CostModel`), so every configuration step (the uniform
ratio, SLIMING's threshold, measured group errors) can search under a latency budget as it does
under MACs.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import device, files, measure, utils
from ..errors import PrunewiseError

#: Kept fractions of each timed layer's input and output widths.
FRACTIONS = (1.0, 0.75, 0.5, 0.3, 0.15, 0.05)
TIMED = (nn.Conv1d, nn.Conv2d, nn.Linear)
FORMAT = 1


@dataclass
class Table:
    """Per timed layer, the widths of its grid and the milliseconds at each (``ms[i][j]``: input
    width ``ins[i]``, output width ``outs[j]``); the dense model's time; the key."""
    key: dict
    layers: dict = field(default_factory=dict)   # name -> {"ins", "outs", "ms", "depthwise",
    #                                              "per_channel": output values per channel}
    dense_ms: float = 0.0
    seconds: float = 0.0

    def layer_ms(self, name: str, cin: float, cout: float) -> float:
        """Layer ``name``'s time at ``cin`` inputs and ``cout`` outputs (interpolated)."""
        row = self.layers[name]
        ins, outs, ms = np.array(row["ins"]), np.array(row["outs"]), np.array(row["ms"])
        if row["depthwise"]:
            return float(np.interp(cout, outs, ms[0]))
        per_in = [float(np.interp(cout, outs, ms[i])) for i in range(len(ins))]
        return float(np.interp(cin, ins, per_in))

    def layers_ms(self, widths: dict[str, tuple[float, float]]) -> float:
        return sum(self.layer_ms(n, ci, co) for n, (ci, co) in widths.items()
                   if n in self.layers)

    @property
    def rest_ms(self) -> float:
        """The dense model's time outside the timed layers (at least 0)."""
        full = {n: (r["ins"][-1], r["outs"][-1]) for n, r in self.layers.items()}
        return max(0.0, self.dense_ms - self.layers_ms(full))

    def volume(self, widths: dict[str, tuple[float, float]]) -> float:
        """The fraction of the timed layers' output values ``widths`` keep."""
        rows = [(r.get("per_channel", 1.0), widths.get(n, (0, r["outs"][-1]))[1], r["outs"][-1])
                for n, r in self.layers.items()]
        full = sum(p * c0 for p, _, c0 in rows)
        return sum(p * c for p, c, _ in rows) / full if full > 0 else 1.0

    def predict(self, cost, counts) -> float:
        """Milliseconds of the configuration ``counts`` (per prunable group of ``cost``, a
        :class:`~prunewise.structured.surgery.CostModel`)."""
        widths = cost.layer_widths(counts)
        return self.rest_ms * self.volume(widths) + self.layers_ms(widths)

    def save(self, path: Path) -> None:
        files.write_json(path, {"format": FORMAT, **asdict(self)})


def key_of(model: nn.Module, x, batch: int) -> dict:
    """What a table holds for: the device, threads, batch size, dtype, torch and the timed
    layers' shapes (a digest)."""
    dev = device.of(model)
    shapes = {n: list(m.weight.shape) + [getattr(m, "groups", 1)]
              for n, m in model.named_modules() if isinstance(m, TIMED)}
    sample = utils.take(x, slice(0, 1))
    inputs = {k: list(v.shape[1:]) for k, v in sample.items()} if isinstance(sample, dict) \
        else list(getattr(sample, "shape", [])[1:])
    text = json.dumps({"layers": shapes, "inputs": inputs}, sort_keys=True)
    return {"device": _device_name(dev),
            "threads": torch.get_num_threads(), "batch": int(batch),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "torch": torch.__version__, "model": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    import platform

    cpu = platform.processor() or platform.machine()
    try:   # the CPU's model name, where the system says it
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return f"{dev.type}:{cpu}"


def _grid(size: int, step: int) -> list[int]:
    """Kept widths of a layer side: :data:`FRACTIONS` of ``size`` in whole ``step`` s."""
    out = {size}
    for f in FRACTIONS:
        out.add(max(step, int(round(f * size / step)) * step))
    return sorted(k for k in out if 0 < k <= size)


def _time(fn, warmup: int, repeats: int, dev) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` untimed calls."""
    return statistics.median([measure.pass_ms(fn, dev) for _ in range(warmup + repeats)]
                             [warmup:])


def _shaped(m: nn.Module, cin: int, cout: int) -> nn.Module:
    """A layer like ``m`` with ``cin`` inputs and ``cout`` outputs (random weights)."""
    if isinstance(m, nn.Linear):
        return nn.Linear(cin, cout, bias=m.bias is not None)
    cls = type(m)
    groups = cin if m.groups == m.in_channels and m.groups == m.out_channels else m.groups
    if m.groups == m.in_channels and m.groups == m.out_channels:
        cout = cin
    return cls(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups,
               m.bias is not None, m.padding_mode)


@torch.no_grad()
def build(model: nn.Module, x, batch: int, names: list[str] | None = None, *, warmup: int = 2,
          repeats: int = 5) -> Table:
    """Time every conv / linear layer of ``model`` in ``names`` (default: all) on its grid at
    batch size ``batch``, and the dense model (module notes)."""
    t0 = time.perf_counter()
    dev = device.of(model)
    xb = device.to(utils.repeat_batch(x, batch), dev)
    mods = dict(model.named_modules())
    names = [n for n in (names if names is not None else list(mods)) if isinstance(
        mods.get(n), TIMED)]
    shapes: dict[str, torch.Size] = {}
    outputs: dict[str, int] = {}

    def seen(name, args) -> None:   # a pre-hook that returned a value would replace the input
        shapes.setdefault(name, args[0].shape)

    def made(name, out) -> None:
        outputs.setdefault(name, out.numel())
    hooks = [mods[n].register_forward_pre_hook(lambda m, args, n=n: seen(n, args)) for n in names]
    hooks += [mods[n].register_forward_hook(lambda m, args, out, n=n: made(n, out))
              for n in names]
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            utils.call(model, xb)
            dense = _time(lambda: utils.call(model, xb), warmup, repeats, dev)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    table = Table(key=key_of(model, x, batch), dense_ms=dense)
    dtype = next(model.parameters()).dtype
    for n in names:
        if n not in shapes:
            continue   # not called on this input
        m, shape = mods[n], shapes[n]
        depthwise = not isinstance(m, nn.Linear) and m.groups == m.in_channels == m.out_channels
        step = 1 if isinstance(m, nn.Linear) or depthwise else m.groups
        cin0 = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        cout0 = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        ins = [cin0] if depthwise else _grid(cin0, step)
        outs = _grid(cout0, step)
        ms = []
        for cin in ins:
            row = []
            for cout in outs:
                c_in = cout if depthwise else cin
                layer = _shaped(m, c_in, cout).to(device=dev, dtype=dtype).eval()
                inp = torch.randn(*_with_channels(shape, c_in, isinstance(m, nn.Linear)),
                                  device=dev, dtype=dtype)
                row.append(_time(lambda: layer(inp), warmup, repeats, dev))
            ms.append(row)
        table.layers[n] = {"ins": ins, "outs": outs, "ms": ms, "depthwise": depthwise,
                           "per_channel": outputs.get(n, cout0) / cout0}
    table.seconds = time.perf_counter() - t0
    return table


def _with_channels(shape: torch.Size, c: int, linear: bool) -> list[int]:
    s = list(shape)
    s[-1 if linear else 1] = c
    return s


def cached(model: nn.Module, x, batch: int, folder: Path | None, **kw) -> tuple[Table, bool]:
    """The table for ``model`` at ``batch`` on this device: read from ``folder`` when one with
    the same key is there, else measured and saved there; ``(table, reused)``."""
    key = key_of(model, x, batch)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = None if folder is None else Path(folder) / f"latency-{name}.json"
    if path is not None and path.is_file():
        try:
            got = files.read_json(path, "latency table")
        except PrunewiseError:   # damaged: measured again below
            got = None
        if isinstance(got, dict) and got.get("format") == FORMAT and got.get("key") == key \
                and _valid(got):
            try:
                return Table(key=got["key"], layers=got["layers"], dense_ms=float(got["dense_ms"]),
                             seconds=float(got.get("seconds", 0.0))), True
            except (KeyError, TypeError, ValueError):
                pass   # a damaged table: measured again below
    table = build(model, x, batch, **kw)
    if path is not None:
        table.save(path)
    return table, False


def _valid(got: dict) -> bool:
    """Whether a table read from a file has the shape :class:`Table` needs (a file can say
    anything: anything else is measured again)."""
    layers, dense = got.get("layers"), got.get("dense_ms")
    if not isinstance(layers, dict) or isinstance(dense, bool) or \
            not isinstance(dense, (int, float)) or not dense >= 0:
        return False
    for row in layers.values():
        if not isinstance(row, dict):
            return False
        ins, outs, ms = row.get("ins"), row.get("outs"), row.get("ms")
        if not (isinstance(ins, list) and isinstance(outs, list) and isinstance(ms, list)
                and ins and outs and len(ms) == len(ins)
                and all(isinstance(r, list) and len(r) == len(outs) for r in ms)):
            return False
        values = ins + outs + [v for r in ms for v in r]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                   for v in values):
            return False
    return True


def default_folder() -> Path:
    """Where tables are kept between runs: ``$PRUNEWISE_CACHE/latency`` or
    ``~/.cache/prunewise/latency``."""
    import os

    root = os.environ.get("PRUNEWISE_CACHE") or Path.home() / ".cache" / "prunewise"
    return Path(root) / "latency"


def check_table(table: Table) -> None:
    if not table.layers:
        raise PrunewiseError("a latency budget needs conv or linear layers to time; this model "
                             "has none the channel groups shrink")
