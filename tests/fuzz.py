"""Seeded fuzzing of the command line and of the files prunewise reads.

    python tests/fuzz.py --seed 0 --examples 200 [--kind cli|files] [--seconds 3] [--json F]

Each example is a command line whose options are drawn from the commands' own click
parameters (the ends of every range, just past them, text the help does not allow, awkward
paths), a valid input file with one field or a few bytes changed, given to the command that
reads it, a generated model file (random layers and one quirk: tied or parametrized or lazy
layers, non-finite or integer outputs, ``sys.exit`` on import or build, ...) given to a command
with ``--model``, or a generated tensors data file (random dtypes, shapes, splits and labels). Everything runs in this process (``prunewise.cli.main``), under an address-space
limit, with a time limit per example after which a run that is still working counts as
accepted. The invariant every example must keep:

* exit 0, or exit 2 with one line on stderr and no traceback (never exit 1);
* no input file changed, nothing written outside the example's own folder;
* memory bounded (an allocation past the limit fails and shows as exit 1).

A failing example is printed as a JSON case; ``tests/fuzz_corpus.json`` keeps every one found
so far, and ``tests/test_fuzz.py`` replays them and runs a bounded number of new ones in CI.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
from pathlib import Path

from helpers import limit_address_space  # tests/ is on the path: this file runs as a script

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "fuzz_corpus.json"
MEMORY = 1 << 30            # address space an example may add to the harness's own
SKIP_OPTIONS = {"help", "version"}


class Overtime(BaseException):
    """Raised by the timer: the example was still working when its time ran out (accepted)."""


# --------------------------------------------------------------------------- fixtures
def build_inputs(root: Path) -> dict[str, Path]:
    """Small valid inputs: a dense checkpoint, a pruned run (masks, report), a structurally
    pruned model and a data set in each local format."""
    import numpy as np
    import torch
    from PIL import Image

    from prunewise import checkpoints, models
    from prunewise.cli import main

    torch.manual_seed(0)
    ck = root / "dense"
    checkpoints.save_model(models.create("resnet20", num_classes=10, in_channels=1), ck,
                           meta={"data": {"name": "digits", "root": None, "image_size": 8,
                                          "seed": 0}})
    bases = root / "bases"
    shutil.copytree(ck, bases / "seed-0")
    quiet = ["--samples", "32", "--recalibrate-samples", "32", "--no-repair",
             "--latency-repeats", "1", "--quiet"]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["prune", "fvw", str(ck), "--method", "magnitude", "--sparsity", "0.5",
                     *quiet, "--out", str(root / "fvw")]) == 0
        assert main(["prune", "sliming", str(ck), "--method", "l1", "--macs", "0.6",
                     "--recalibrate-samples", "32", "--no-repair", "--latency-repeats", "1",
                     "--quiet", "--out", str(root / "sliming")]) == 0
    from safetensors.torch import save_file
    x = torch.rand(40, 1, 8, 8)
    save_file({"train.x": x, "train.y": torch.arange(40) % 10, "test.x": x[:20].clone(),
               "test.y": torch.arange(20) % 10}, str(root / "data.safetensors"))
    rng = np.random.RandomState(0)
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    import pickle
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"labels": list(rng.randint(0, 10, 8)), b"data": rng.randint(0, 256, (8, 3072))
               .astype(np.uint8)}
        (cifar / name).write_bytes(pickle.dumps(obj, protocol=2))
    fm = root / "fashion"
    fm.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        images = struct.pack(">IIII", 2051, n, 28, 28) + rng.randint(0, 256, n * 784) \
            .astype(np.uint8).tobytes()
        labels = struct.pack(">II", 2049, n) + rng.randint(0, 10, n).astype(np.uint8).tobytes()
        (fm / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (fm / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    folder = root / "images"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(
                    folder / split / cls / f"{i}.png")
    return {"ck": ck, "bases": bases, "fvw": root / "fvw", "sliming": root / "sliming",
            "tensors": root / "data.safetensors", "cifar": root / "cifar", "fashion": fm,
            "images": folder}


# --------------------------------------------------------------------------- command lines
FAST = ["--recalibrate-samples", "32", "--no-repair", "--latency-repeats", "1", "--quiet"]
BASE_CALLS = {
    "train": ["train", "resnet20", "--epochs", "1", "--batch-size", "256", "--quiet",
              "--out", "{out}/t"],
    "eval": ["eval", "{ck}"],
    "info": ["info", "{ck}"],
    "export": ["export", "{ck}", "--onnx", "{out}/m.onnx"],
    "report": ["report", "{out}/run"],
    "prune fvw": ["prune", "fvw", "{ck}", "--method", "magnitude", "--sparsity", "0.5",
                  "--samples", "32", *FAST, "--out", "{out}/p"],
    "prune sliming": ["prune", "sliming", "{ck}", "--method", "l1", "--macs", "0.6", *FAST,
                      "--out", "{out}/s"],
    "bench": ["bench", "--methods", "magnitude", "--sparsity", "0.5", "--seeds", "0",
              "--base", "{bases}", "--finetune-epochs", "0", *FAST, "--out", "{out}/b"],
}

WEIRD_NUMBERS = ["", " ", "nan", "inf", "-inf", "1e309", "0x10", "1_0", "١", "１", "٠.٥", "1e",
                 ".", "--", "1,5", "9" * 40, "-9" * 20, "1.0", " 1", "+1", "1e-320", "true"]
WEIRD_TEXT = ["", " ", "-", "x" * 5000, "é", "\u202e", "a,b", "*", "[", "{seed}", "..", "%s%n",
              "cpu", "cuda", "cuda:99", "mps", "meta", "cpu:0", "resnet20", "digits"]


def numeric_values(kind) -> list[str]:
    """The ends of ``kind``'s range, just past them and inside."""
    lo, hi = getattr(kind, "min", None), getattr(kind, "max", None)
    integer = kind.name == "integer range" or isinstance(getattr(kind, "min", None), int) \
        and not hasattr(kind, "min_open")
    out = ["0", "1", "-1", "0.5", "2", "1e-9", "0.9999999999999999", "1e300"]
    for edge in (lo, hi):
        if edge is None:
            continue
        out += [str(edge), str(edge + 1), str(edge - 1)] if integer else \
            [repr(float(edge)), repr(float(edge) + 1e-12), repr(float(edge) - 1e-12),
             repr(float(edge) * (1 + 1e-15) + 1e-300)]
    return out


def path_values(ex: Path, inputs: dict) -> list[str]:
    """Awkward places to read from or write to, all inside this example's folder or inputs."""
    (ex / "file").write_text("x")
    (ex / "dir").mkdir(exist_ok=True)
    for name, target in (("dangling", ex / "nowhere"), ("loop", ex / "loop"),
                         ("to-input", inputs["ck"]), ("to-mem", Path("/proc/self/mem"))):
        if not os.path.lexists(ex / name):
            os.symlink(target, ex / name)
    if not (ex / "fifo").exists():
        os.mkfifo(ex / "fifo")
    bad = str(ex / b"n\xff".decode("utf-8", "surrogateescape"))
    return [str(ex / n) for n in ("file", "dir", "dangling", "loop", "to-input", "to-mem",
                                  "fifo", "new/deeper")] + [
        bad, str(inputs["ck"]), str(inputs["ck"] / "config.json"), str(ex / ("a" * 300)),
        str(ex / ("a/" * 600)), "", "-", "/dev/null", str(ex / "x\ny")]


def option_values(param, ex: Path, inputs: dict) -> list[str]:
    import click

    kind = param.type
    if isinstance(kind, click.Choice):
        return list(kind.choices) + [c.upper() for c in kind.choices] + ["", "x"]
    if kind.name in ("integer range", "integer", "number", "float", "float range"):
        return numeric_values(kind) + WEIRD_NUMBERS
    if isinstance(kind, click.Path) or param.name in ("out", "root", "onnx", "plan", "base"):
        return path_values(ex, inputs) + WEIRD_TEXT[:6]
    if param.name == "model":
        return ["x", "x:y", ":", str(ex / "none.py") + ":f", str(HERE / "user_models.py") +
                ":nope", str(HERE / "user_models.py") + ":cnn", "os:system", "a" * 5000 + ":f",
                str(ex / "to-mem") + ":f"] + WEIRD_TEXT[:5]
    if param.name in ("methods", "sparsity", "macs", "seeds"):
        return ["0.5,0.6", "0,1", ",", "0.5,,0.6", "1_0", "magnitude,magnitude", "fvw,l1",
                "0.5,0.5000000001", "１", "0.5;0.6", "3" * 30] + WEIRD_NUMBERS[:8]
    return WEIRD_TEXT + WEIRD_NUMBERS[:6]


def command_params(words: list[str]):
    from prunewise.cli import cli

    command = cli
    for w in words:
        command = command.commands[w]
    return [p for p in command.params if p.name not in SKIP_OPTIONS]


def cli_example(rng: random.Random, ex: Path, inputs: dict) -> list[str]:
    """A base call with one to three options replaced or added."""
    import click

    name = rng.choice(sorted(BASE_CALLS))
    argv = list(BASE_CALLS[name])
    params = command_params(name.split())
    for _ in range(rng.choice((1, 1, 2, 3))):
        p = rng.choice(params)
        if isinstance(p, click.Argument):
            value = rng.choice(option_values(p, ex, inputs))
            positional = [i for i, a in enumerate(argv) if a.startswith("{") and i > 0]
            if positional:
                argv[positional[0]] = value
            continue
        flag = max(p.opts, key=len)
        if p.is_flag:
            argv.append(rng.choice(p.opts + p.secondary_opts))
            continue
        value = rng.choice(option_values(p, ex, inputs))
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


# --------------------------------------------------------------------------- files
JSON_VALUES = [None, True, False, -1, 0, 1, 2, 3.5, -0.0, 2 ** 63, -(2 ** 63), 10 ** 30, 1e308,
               "", "x", "x" * 3000, [], {}, [1, 2], {"a": 1}, [[[[[[[[[[]]]]]]]]]], "NaN",
               "\ud800", "١", "F32", [10 ** 9, 10 ** 9], [0], "../../etc/passwd"]


def json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from json_paths(v, prefix + (i,))


def mutate_json(obj, rng: random.Random):
    """``obj`` with one field replaced, removed, or given a sibling; returns (new, what)."""
    paths = [p for p in json_paths(obj) if p]
    if not paths:
        return rng.choice(JSON_VALUES), "root"
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    action = rng.choice(("replace", "replace", "replace", "remove", "add", "nan", "deep"))
    key = path[-1]
    if action == "remove":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent["zz_unknown"] = rng.choice(JSON_VALUES)
    elif action == "nan":
        parent[key] = float(rng.choice(("nan", "inf", "-inf")))
    elif action == "deep":   # a marker that :func:`dumps` writes as lists nested this deep
        parent[key] = f"{DEEP}{rng.choice((50, 70, 5000))}"
    else:
        parent[key] = rng.choice(JSON_VALUES)
    return obj, f"{action} {'.'.join(map(str, path))}"


DEEP = "__deep__"


def dumps(obj) -> str:
    """JSON text of ``obj`` (NaN allowed, lone surrogates escaped as JSON allows), with each
    :data:`DEEP` marker replaced by lists nested that deep."""
    text = json.dumps(obj, allow_nan=True)
    return re.sub(rf'"{DEEP}(\d+)"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)


def rewrite_json(path: Path, rng: random.Random) -> str:
    obj, what = mutate_json(json.loads(path.read_text()), rng)
    path.write_text(dumps(obj))
    return what


def rewrite_safetensors_header(path: Path, rng: random.Random) -> str:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, what = mutate_json(json.loads(raw[8:8 + n]), rng)
    text = dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return f"header {what}"


def rewrite_bytes(path: Path, rng: random.Random) -> str:
    raw = bytearray(path.read_bytes())
    action = rng.choice(("truncate", "flip", "append", "empty", "nan", "mem"))
    if action == "truncate" and raw:
        raw = raw[:rng.randrange(len(raw))]
    elif action == "flip" and raw:
        i = rng.randrange(min(len(raw), 64) if rng.random() < 0.5 else len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    elif action == "append":
        raw += os.urandom(rng.choice((1, 100)))
    elif action == "empty":
        raw = bytearray()
    elif action == "nan" and len(raw) > 16:
        i = len(raw) - 4 * rng.randrange(1, max(2, len(raw) // 8))
        raw[i:i + 4] = struct.pack("<f", float("nan"))
    elif action == "mem":
        path.unlink()
        path.symlink_to("/proc/self/mem")
        return "symlink to /proc/self/mem"
    path.write_bytes(bytes(raw))
    return action


def rewrite_idx(path: Path, rng: random.Random) -> str:
    raw = gzip.decompress(path.read_bytes())
    fields = (len(raw) > 16 and raw[2] == 8 and raw[3] == 3) and 4 or 2
    values = list(struct.unpack(f">{fields}I", raw[:4 * fields]))
    i = rng.randrange(fields)
    values[i] = rng.choice((0, 1, 28, 255, 2049, 2051, 60_001, 4_900_000, 2 ** 31, 2 ** 32 - 1))
    path.write_bytes(gzip.compress(struct.pack(f">{fields}I", *values) + raw[4 * fields:]))
    return f"IDX field {i} = {values[i]}"


def rewrite_cifar(path: Path, rng: random.Random) -> str:
    import pickle

    import numpy as np
    obj = pickle.loads(path.read_bytes())   # our own fixture, written above
    key = rng.choice([b"labels", b"data"])
    choices = {b"labels": [[0.5] * 8, list(range(8)), [-1] * 8, [10 ** 12] * 8, [], "x", None,
                           [0] * 3],
               b"data": [np.zeros((8, 10), np.uint8), np.zeros((8, 3072), np.float64),
                         np.zeros((0, 3072), np.uint8), "x", None, [[1] * 3072] * 8]}
    obj[key] = rng.choice(choices[key])
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return f"cifar {key.decode()}"


def rewrite_png(path: Path, rng: random.Random) -> str:
    raw = bytearray(path.read_bytes())
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and rng.random() < 0.6:
        w, h = rng.choice(((13000, 13000), (1, 1), (0, 0), (2 ** 31 - 1, 1), (6000, 6000)))
        raw[16:24] = struct.pack(">II", w, h)
        path.write_bytes(bytes(raw))
        return f"png declares {w}x{h}"
    return rewrite_bytes(path, rng)


def file_targets(inputs: dict) -> list[tuple[str, str, object, list[str]]]:
    """(input, file inside it, how to change it, the command that reads it: {dir} is the copy)."""
    eval_ck = ["eval", "{dir}"]
    return [
        ("ck", "config.json", rewrite_json, eval_ck),
        ("ck", "config.json", rewrite_json, ["info", "{dir}"]),
        ("ck", "config.json", rewrite_json, ["prune", "fvw", "{dir}", "--method", "magnitude",
                                             "--sparsity", "0.5", "--samples", "32", *FAST,
                                             "--out", "{out}/p"]),
        ("ck", "model.safetensors", rewrite_safetensors_header, eval_ck),
        ("ck", "model.safetensors", rewrite_bytes, eval_ck),
        ("sliming", "model/config.json", rewrite_json, ["eval", "{dir}/model"]),
        ("sliming", "model/structure/0/plan.json", rewrite_json, ["eval", "{dir}/model"]),
        ("sliming", "model/structure/0/plan.safetensors", rewrite_safetensors_header,
         ["info", "{dir}/model"]),
        ("sliming", "plan/plan.json", rewrite_json, ["prune", "sliming", "{ck}", "--plan",
                                                     "{dir}/plan", *FAST, "--out", "{out}/s"]),
        ("fvw", "report.json", rewrite_json, ["report", "{dir}"]),
        ("fvw", "plan.json", rewrite_json, ["python", "mask-plan", "{dir}"]),
        ("fvw", "masks.safetensors", rewrite_safetensors_header, ["python", "mask-plan", "{dir}"]),
        ("fvw", "masks.safetensors", rewrite_bytes, ["python", "mask-plan", "{dir}"]),
        ("tensors", "", rewrite_safetensors_header, ["eval", "{ck}", "--data", "tensors",
                                                     "--root", "{dir}"]),
        ("tensors", "", rewrite_bytes, ["eval", "{ck}", "--data", "tensors", "--root", "{dir}"]),
        ("cifar", "cifar-10-batches-py/test_batch", rewrite_cifar,
         ["eval", "{ck}", "--data", "cifar10", "--root", "{dir}"]),
        ("cifar", "cifar-10-batches-py/test_batch", rewrite_bytes,
         ["eval", "{ck}", "--data", "cifar10", "--root", "{dir}"]),
        ("fashion", "t10k-images-idx3-ubyte.gz", rewrite_idx,
         ["eval", "{ck}", "--data", "fashion-mnist", "--root", "{dir}"]),
        ("fashion", "train-labels-idx1-ubyte.gz", rewrite_idx,
         ["python", "data", "fashion-mnist", "{dir}"]),
        ("images", "val/a/0.png", rewrite_png,
         ["eval", "{ck}", "--data", "imagefolder", "--root", "{dir}"]),
    ]


# --------------------------------------------------------------------------- user models
#: Layers a generated model is built from: (constructor text for ``C`` input channels and
#: ``W`` width, whether it keeps the image's spatial shape).
LAYERS = ["nn.Conv2d({c}, {w}, 3, padding=1)", "nn.Conv2d({c}, {w}, 1)",
          "nn.Conv2d({c}, {w}, 3, padding=1, groups={g})", "nn.BatchNorm2d({c})",
          "nn.GroupNorm({g}, {c})", "nn.ReLU()", "nn.Dropout(0.1)", "nn.Identity()"]
#: What can be wrong (or right) about a generated model file: each is a change to the
#: template's text (see :func:`model_file`).
QUIRKS = ["none", "none", "tie", "weight_norm", "spectral_norm", "old_weight_norm", "lazy",
          "nan", "inf", "int", "no_params", "exit_import", "exit_build", "raise_build",
          "not_module", "wrong_classes", "three_d", "dict_out", "tuple_out", "half",
          "double", "lstm", "syntax", "huge_width", "keyboard_build", "returns_none"]


def model_file(rng: random.Random, path: Path) -> str:
    """Write a model factory ``f`` of random layers with one quirk to ``path``; the quirk."""
    quirk = rng.choice(QUIRKS)
    c, body = 1, []
    for _ in range(rng.randint(1, 5)):
        w = rng.choice((2, 4, 6, 8))
        layer = rng.choice(LAYERS)
        g = rng.choice([d for d in (1, 2) if c % d == 0 and w % d == 0])
        body.append(layer.format(c=c, w=w, g=g))
        if layer.startswith("nn.Conv2d"):
            c = w
    width = 10 ** 6 if quirk == "huge_width" else c
    head = [f"nn.Conv2d({c}, {width}, 1)"] if quirk == "huge_width" else []
    classes = 7 if quirk == "wrong_classes" else 10
    lines = ["import sys", "import warnings", "import torch", "from torch import nn",
             "from torch.nn.utils import parametrizations", "",
             "warnings.filterwarnings('ignore', category=FutureWarning)   # torch's, not ours"]
    if quirk == "exit_import":
        lines.append(f"sys.exit({rng.choice((0, 1, 3, 'None'))})")
    if quirk == "syntax":
        lines.append("def broken(:")
    lines += ["class Net(nn.Module):", "    def __init__(self):", "        super().__init__()",
              f"        self.body = nn.Sequential({', '.join(body + head)})",
              f"        self.fc = nn.Linear({width}, {classes})",
              "        self.fc2 = nn.Linear(10, 10)"]
    if quirk == "tie":
        lines.append("        self.fc3 = nn.Linear(10, 10)\n        self.fc3.weight = self.fc2.weight")
    if quirk in ("weight_norm", "spectral_norm"):
        lines.append(f"        self.fc2 = parametrizations.{quirk}(self.fc2)")
    if quirk == "old_weight_norm":
        lines.append("        self.fc2 = nn.utils.weight_norm(self.fc2)")
    if quirk == "lazy":
        lines.append("        self.fc2 = nn.LazyLinear(10)")
    if quirk == "lstm":
        lines.append("        self.rnn = nn.LSTM(10, 10, batch_first=True)")
    lines += ["    def forward(self, x):", "        h = self.body(x).mean((2, 3))",
              "        out = self.fc2(self.fc(h))"]
    if quirk == "tie":
        lines.append("        out = self.fc3(out)")
    if quirk == "lstm":
        lines.append("        out = self.rnn(out[:, None])[0][:, 0]")
    out = {"nan": "out * float('nan')", "inf": "out * float('inf')", "int": "out.long()",
           "three_d": "out[:, None]", "dict_out": "{'logits': out}", "tuple_out": "(out, h)",
           "half": "out.half()", "double": "out.double()"}.get(quirk, "out")
    lines += [f"        return {out}", "", "def f():"]
    lines.append({"exit_build": "    sys.exit(2)", "raise_build": "    raise ValueError('no')",
                  "keyboard_build": "    raise RuntimeError('stop')",
                  "not_module": "    return 'model'", "returns_none": "    return None",
                  "no_params": "    return nn.Sequential(nn.Flatten(), nn.Linear(1, 1, bias=False)"
                               ").requires_grad_(False) if False else nn.Identity()"
                  }.get(quirk, "    return Net()"))
    path.write_text("\n".join(lines) + "\n")
    return quirk


def model_example(rng: random.Random, ex: Path, inputs: dict) -> tuple[list[str], str]:
    """A generated model file given to a command that builds it."""
    path = ex / "user_model.py"
    quirk = model_file(rng, path)
    spec = f"{path}:f"
    data = rng.choice((["--data", "digits"], ["--data", "tensors", "--root", "{tensors}"]))
    argv = rng.choice((
        ["train", "--model", spec, *data, "--epochs", "1", "--batch-size", "32", "--quiet",
         "--out", "{out}/t"],
        ["train", "--model", spec, *data, "--epochs", "1", "--batch-size", "32", "--quiet",
         "--out", "{out}/t", "--lr", "1e-3"],
        ["eval", "{ck}", "--model", spec, *data],
        ["info", "{ck}", "--model", spec]))
    return argv, f"model file ({quirk})"


# --------------------------------------------------------------------------- tensors files
DTYPES = ["float32", "float32", "float32", "float32", "float64", "float16", "bfloat16", "uint8", "int64", "int32",
          "bool"]


def tensors_file(rng: random.Random, path: Path) -> str:
    """Write a tensors data set: a random sample shape and dtype, and at most one defect
    (labels, an empty or missing split, a split of another shape, named inputs, a NaN); what
    it is."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    shape = rng.choice(((1, 8, 8), (1, 8, 8), (3, 8, 8), (64,), (), (1, 1, 8, 8), (1, 2, 2),
                        (2, 8, 8), (1, 16, 16)))
    dtype = getattr(torch, rng.choice(DTYPES))
    defect = rng.choice(("none", "none", "none", "labels neg", "labels float", "labels 2d",
                         "labels short", "labels big", "empty train", "empty test",
                         "empty val", "other shape", "named", "nan", "val given", "one sample"))
    sizes = {"train": 1 if defect == "one sample" else 40, "test": 20,
             "val": 10 if defect == "val given" else None}
    if defect.startswith("empty"):
        sizes[defect.split()[1]] = 0
    victim = rng.choice([s for s, n in sizes.items() if n is not None])
    out = {}
    for split, n in sizes.items():
        if n is None:
            continue
        sh = tuple(reversed(shape)) + (1,) if defect == "other shape" and split == victim \
            else shape
        t = torch.rand((n, *sh), generator=gen) * 255
        x = (t > 128) if dtype == torch.bool else t.to(dtype)
        if defect == "nan" and split == victim and dtype.is_floating_point and n:
            x.view(-1)[0] = float("nan")
        out[f"{split}.x.a" if defect == "named" else f"{split}.x"] = x
        y = torch.arange(n) % 10
        if defect.startswith("labels") and split == victim:
            y = {"labels neg": y - 1, "labels float": torch.rand(n, generator=gen),
                 "labels 2d": torch.stack([y, y], 1), "labels short": y[:-1],
                 "labels big": y + 10 ** 9}[defect]
        out[f"{split}.y"] = y
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return f"x {list(shape)} {str(dtype)[6:]}, {defect} ({victim})"


def tensors_example(rng: random.Random, ex: Path, inputs: dict) -> tuple[list[str], str]:
    """A generated tensors data set given to a command that reads it."""
    path = ex / "data.safetensors"
    what = tensors_file(rng, path)
    data = ["--data", "tensors", "--root", str(path)]
    argv = rng.choice((
        ["train", "resnet20", *data, "--epochs", "1", "--batch-size", "1", "--quiet",
         "--out", "{out}/t"],
        ["train", "--model", str(HERE / "user_models.py") + ":OddCNN", *data, "--epochs", "1",
         "--batch-size", "1", "--quiet", "--out", "{out}/t"],
        ["eval", "{ck}", *data],
        ["prune", "sliming", "{ck}", "--method", "l1", "--macs", "0.6", *data, *FAST,
         "--out", "{out}/s"],
        ["prune", "fvw", "{ck}", "--method", "magnitude", "--sparsity", "0.5", "--samples",
         "8", *data, *FAST, "--out", "{out}/p"]))
    return argv, f"tensors file ({what})"


def file_example(rng: random.Random, ex: Path, inputs: dict) -> tuple[list[str], str]:
    name, inner, change, argv = rng.choice(file_targets(inputs))
    copy = ex / "in" / inputs[name].name
    if inputs[name].is_dir():
        shutil.copytree(inputs[name], copy, symlinks=True)
    else:
        copy.parent.mkdir(parents=True)
        shutil.copy(inputs[name], copy)
    what = change(copy / inner if inner else copy, rng)
    return [a.replace("{dir}", str(copy)) for a in argv], f"{name}/{inner}: {what}"


def python_call(argv: list[str]) -> int:
    """Library readers the command line does not reach directly: PrunewiseError is exit 2."""
    from prunewise import PrunewiseError
    from prunewise import data as D
    from prunewise.plan import MaskPlan
    try:
        if argv[1] == "mask-plan":
            MaskPlan.load(argv[2])
        else:
            D.load(argv[2], argv[3])
    except PrunewiseError as e:
        print(f"prunewise: error: {e}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- running
def snapshot(folder: Path) -> dict[str, str]:
    """Path -> digest of every file under ``folder`` (symlinks by their target)."""
    out = {}
    for dirpath, dirs, names in os.walk(folder):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                out[p] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[p] = "special"
    return out


def run_one(argv: list[str], seconds: float) -> tuple[int | None, str]:
    """Run one example; returns (exit code, or None when it ran past ``seconds``; stderr)."""
    from prunewise.cli import main

    def stop(*_):
        raise Overtime

    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = python_call(argv) if argv[0] == "python" else main(argv)
    except Overtime:
        code = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        # the timer can fire inside torch's grad-mode switch, which then stays off: every
        # example starts as a fresh process would
        import torch
        torch.set_grad_enabled(True)
    return code, err.getvalue()


def problem(code, err: str) -> str | None:
    """What breaks the invariant, or None."""
    if code is None or code == 0:
        return None
    if code != 2:
        return f"exit {code}: {err.strip()[-800:]}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if "Traceback" in err or len(lines) != 1 or len(lines[0]) > 2000:
        return f"exit 2 but not one short line: {err.strip()[-800:]}"
    return None


def example(kind: str, rng: random.Random, ex: Path, inputs: dict) -> tuple[list[str], str]:
    if kind == "cli":
        return cli_example(rng, ex, inputs), "cli"
    if kind == "models":
        return model_example(rng, ex, inputs)
    if kind == "tensors":
        return tensors_example(rng, ex, inputs)
    return file_example(rng, ex, inputs)


def fill(argv: list[str], ex: Path, inputs: dict) -> list[str]:
    keys = {"{out}": str(ex / "out"), "{ck}": str(inputs["ck"]), "{ex}": str(ex),
            "{tensors}": str(inputs["tensors"]),
            "{bases}": str(inputs["bases"]), "{work}": str(ex.parent)}
    out = []
    for a in argv:
        for k, v in keys.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def campaign(seed: int, examples: int, kinds: list[str], seconds: float, work: Path,
             replay: list[dict] | None = None, only: list[int] | None = None,
             verbose: bool = False) -> list[dict]:
    """Run ``examples`` new examples (and the ``replay`` cases); returns the failures."""
    inputs = build_inputs(work / "inputs")
    before = snapshot(work / "inputs")
    limit_address_space(MEMORY)
    failures = []
    # a saved case is its command line, or (a generated file's) the example that made it
    cases = [(c.get("argv"), c.get("what", "corpus"), c.get("example"), c.get("kinds", kinds))
             for c in (replay or [])]
    cases += [(None, None, (seed, i), kinds)
              for i in (only if only is not None else range(examples))]
    for i, (argv, what, made, made_kinds) in enumerate(cases):
        ex = work / f"ex-{i}"
        (ex / "out").mkdir(parents=True)
        shutil.copytree(inputs["fvw"], ex / "out" / "run")
        os.chdir(ex / "out")
        if made is not None:   # example N of seed S: its own generator, so it reruns alone
            rng = random.Random(f"{made[0]}:{made[1]}")
            argv, what = example(rng.choice(made_kinds), rng, ex, inputs)
            what = f"seed {made[0]} example {made[1]}: {what}"
        else:
            path_values(ex, inputs)
        argv = fill(argv, ex, inputs)
        code, err = run_one(argv, seconds)
        bad = problem(code, err)
        if verbose:
            print(f"[{what}] {code} {' '.join(a[:80] for a in argv[:14])[:300]}\n    "
                  f"{(err.strip().splitlines() or [''])[-1][:300]}", file=sys.stderr)
        if snapshot(work / "inputs") != before:
            bad = (bad or "") + " an input file changed"
            shutil.rmtree(work / "inputs")
            inputs = build_inputs(work / "inputs")
            before = snapshot(work / "inputs")
        stray = [p for p in os.listdir(work) if p != "inputs" and not p.startswith("ex-")]
        if stray:
            bad = (bad or "") + f" wrote outside its folder: {stray}"
        if bad:
            failures.append({"argv": [a.replace(str(ex), "{ex}").replace(str(work), "{work}")
                                      for a in argv], "what": what, "problem": bad,
                             **({"example": list(made), "kinds": made_kinds}
                                if made is not None else {})})
        os.chdir(work)
        shutil.rmtree(ex, ignore_errors=True)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--kind", choices=["cli", "files", "models", "tensors", "both", "user",
                                       "all"], default="all",
                    help="both: cli and files; user: generated model files and tensors data "
                         "files; all: the four")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--replay", action="store_true", help="also run tests/fuzz_corpus.json")
    ap.add_argument("--only", type=int, nargs="*", help="run just these example numbers")
    ap.add_argument("--json", type=Path, help="write the failures here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every example")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    kinds = {"both": ["cli", "files"], "user": ["models", "tensors"],
             "all": ["cli", "files", "models", "tensors"]}.get(
        args.kind, [args.kind])
    replay = json.loads(CORPUS.read_text()) if args.replay and CORPUS.exists() else []
    with tempfile.TemporaryDirectory(prefix="prunewise-fuzz-") as work:
        failures = campaign(args.seed, args.examples, kinds, args.seconds, Path(work), replay,
                            args.only, args.verbose)
    for f in failures:
        print(json.dumps(f, ensure_ascii=True))
    if args.json:
        args.json.write_text(json.dumps(failures, indent=1, ensure_ascii=True))
    print(f"{len(failures)} failures in {args.examples + len(replay)} examples", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
