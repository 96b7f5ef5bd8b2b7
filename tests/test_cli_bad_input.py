"""The CLI half of the safety contract (docs/safety.md).

- A table of bad inputs across every command: each is exit 2, exactly one non-empty stderr line,
  no traceback, refused before any work (milliseconds each) and nothing changed on disk.
- Output paths are checked before any work; OSError on our own paths is exit 2, one line.
- `prunewise report` writes only inside its folder, whatever the run names in report.json.
- Bench cells and `prune fvw` outputs are identical after a kill and a re-run.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_bad_input, invoke
from prunewise import checkpoints, files, models, report
from prunewise.cli import options
import contextlib

MISSING = "missing-folder"


def stage(test, val=None):
    return {"val": val, "test": test}


def sample_run(**extra) -> dict:
    """A masked run's report, shaped as prunewise.runs writes it."""
    return {"kind": "prune-unstructured", "method": "fvw", "seed": 0, "seconds": 1.0,
            "sparsity": 0.5, "budget": {"sparsity": 0.5},
            "accuracy": {"dense": stage(0.9), "pruned": stage(0.5), "recalibrated": None,
                         "finetuned": None},
            "params": {"dense": 100, "pruned": 50, "ratio": 0.5, "counted": "nonzero"},
            "macs": {"dense": 100, "pruned": 50, "ratio": 0.5, "counted": "nonzero weights"},
            "latency_ms": None, "layers": [{"layer": "a.weight", "sparsity": 0.5}],
            "history": [{"iteration": 1, "sparsity": 0.5}], "config": {}, **extra}


def save_digits_model(folder: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    checkpoints.save_model(models.create("resnet20", num_classes=10, in_channels=1), folder,
                     meta={"data": {"name": "digits", "root": None, "image_size": 16, "seed": 0}})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Everything the bad inputs point at, in one folder that each case snapshots."""
    w = tmp_path_factory.mktemp("world")
    save_digits_model(w / "ck")
    save_digits_model(w / "bases" / "seed-0")
    (w / "afile").write_text("not a folder\n")
    (w / "ro").mkdir()
    (w / "badck").mkdir()
    (w / "badck" / "config.json").write_text("{broken")
    (w / "wrongck").mkdir()
    (w / "wrongck" / "config.json").write_text(json.dumps(
        {"format": 1, "arch": "resnet20", "num_classes": "ten", "in_channels": 1}))
    good = report.write(w / "ro" / "rep", sample_run(), kind="prune-unstructured")
    (w / "rep_corrupt").mkdir()
    (w / "rep_corrupt" / "report.json").write_text("{")
    (w / "rep_empty").mkdir()
    for name, body in (("rep_types", {**good, "kind": 3}),
                       ("rep_accuracy", {**good, "accuracy": {"dense": stage(1.5)}}),
                       ("rep_list", [1, 2]),
                       ("rep_sparsity", {**good, "sparsity": "high"}),
                       ("rep_runs", {**good, "kind": "demo", "runs": {"x": {"seed": "0"}}})):
        (w / name).mkdir()
        (w / name / "report.json").write_text(json.dumps(body))
    return w


@pytest.fixture
def in_world(world, monkeypatch):
    """Run inside the world folder (defaults such as runs/demo land there); folders under
    world/ro are read-only (os.access is mocked: the tests run as root, which chmod cannot stop)."""
    monkeypatch.chdir(world)
    real = os.access
    ro = str(world / "ro")

    def access(path, mode, *a, **kw):
        p = str(Path(os.path.abspath(path)))
        if mode & os.W_OK and (p == ro or p.startswith(ro + os.sep)):
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    return world


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


# ---- the table of bad inputs ----------------------------------------------------------------

BASE = {
    "train": ["train", "resnet20", "--epochs", "1"],
    "eval": ["eval", "{w}/ck"],
    "info": ["info", "resnet20"],
    "fvw": ["prune", "fvw", "{w}/ck", "--sparsity", "0.5"],
    "sliming": ["prune", "sliming", "{w}/ck", "--macs", "0.5"],
    "bench": ["bench", "--base", "{w}/bases", "--seeds", "0", "--methods", "magnitude",
              "--sparsity", "0.5"],
    "export": ["export", "{w}/ck"],
    "report": ["report"],
    "toy": ["toy", "svgg"],
    "demo": ["demo", "--quick"],
}
WRITES = ("train", "fvw", "sliming", "bench", "demo")  # commands with --out

CASES = []


def case(cmd, *extra, words=(), out="{w}/out", ident=None):
    args = BASE[cmd] + list(extra)
    if cmd in WRITES and out is not None:
        args += ["--out", out]
    CASES.append(pytest.param(args, list(words), id=ident or f"{cmd}:{' '.join(extra)}"[:80]))


NOT_FINITE = ("nan", "inf", "-inf", "NaN", "x", "")
# bad --out for every command that writes
for cmd in WRITES:
    for out, words in (("", ["--out"]), ("   ", ["--out"]), ("{w}/afile", ["is a file"]),
                       ("{w}/afile/sub", ["not a folder"]), ("{w}/ro/new", ["not writable"]),
                       ("{w}/ro", ["not writable"])):
        case(cmd, out=out, words=words, ident=f"{cmd}:--out {out!r}")

# train
for v in ("0", "-1", "x", "1.5", "nan"):
    case("train", "--epochs", v, words=["--epochs"])
for v in NOT_FINITE + ("0", "-0.1", "11"):
    case("train", "--lr", v, words=["--lr"])
for v in ("nan", "inf", "-1", "2"):
    case("train", "--weight-decay", v, words=["--weight-decay"])
for v in ("0", "-5", "x"):
    case("train", "--batch-size", v, words=["--batch-size"])
case("train", "--batch-size", "100000", words=["--batch-size", "no step"])
for v in ("0", "100001", "x"):
    case("train", "--num-classes", v, words=["--num-classes"])
case("train", "--num-classes", "7", words=["7", "10"])
for v in ("0", "-1", "4097", "x"):
    case("train", "--image-size", v, words=["--image-size"])
for v in ("-1", "x", "4294967296"):
    case("train", "--data-seed", v, words=["--data-seed"])
    case("train", "--seed", v, words=["--seed"])
case("train", "--optimizer", "lbfgs", words=["lbfgs"])
case("train", "--data", "nope", words=["nope"])
case("train", "--root", "{w}/afile", words=["--root"])
case("train", "--device", "tpu", words=["device"])
case("train", "--bogus", words=["--bogus"])
CASES.append(pytest.param(["train", "resnet21", "--out", "{w}/out"], ["resnet21"], id="train:resnet21"))
CASES.append(pytest.param(["train", "resnet20"], ["--out"], id="train:no --out"))

# eval
case("eval", "--split", "x", words=["--split"])
case("eval", "--image-size", "0", words=["--image-size"])
case("eval", "--data-seed", "-1", words=["--data-seed"])
case("eval", "--data", "nope", words=["nope"])
case("eval", "--device", "tpu", words=["device"])
for target, words in (("{w}/" + MISSING, [MISSING]), ("{w}/badck", ["config"]),
                      ("{w}/wrongck", ["num_classes"]), ("{w}/afile", ["afile"]),
                      ("{w}/rep_empty", ["rep_empty"])):
    CASES.append(pytest.param(["eval", target], words, id=f"eval:{target}"))

# info
CASES.append(pytest.param(["info", "resnet21"], ["resnet21"], id="info:resnet21"))
CASES.append(pytest.param(["info", "{w}/badck"], ["config"], id="info:badck"))
CASES.append(pytest.param(["info"], ["NAME"], id="info:no name"))
for opt, vals in (("--num-classes", ("0", "100001", "x", "nan")),
                  ("--in-channels", ("0", "5000", "x")),
                  ("--input-size", ("0", "-1", "4097", "x", "nan"))):
    for v in vals:
        case("info", opt, v, words=[opt])

# prune fvw
for v in NOT_FINITE + ("0", "1", "1.5", "-0.1"):
    case("fvw", "--sparsity", v, words=["--sparsity"])
for v in ("nan", "0", "1", "2"):
    case("fvw", "--keep", v, words=["--keep"])
for v in ("nan", "inf", "0", "-1"):
    case("fvw", "--alpha", v, words=["--alpha"])
for opt, vals in (("--steps", ("0", "-1", "x")), ("--samples", ("-1", "x")),
                  ("--class-groups", ("0",)), ("--batch-size", ("0",)),
                  ("--finetune-epochs", ("-1", "x")), ("--finetune-batch-size", ("0",)),
                  ("--patience", ("0", "-1")), ("--latency-repeats", ("-1",)),
                  ("--image-size", ("0", "4097")), ("--seed", ("-1",))):
    for v in vals:
        case("fvw", opt, v, words=[opt])
for v in NOT_FINITE + ("0", "-1"):
    case("fvw", "--finetune-epochs", "1", "--lr", v, words=["--lr"])
for v in ("nan", "inf", "-1"):
    case("fvw", "--finetune-epochs", "1", "--weight-decay", v, words=["--weight-decay"])
case("fvw", "--finetune-epochs", "1", "--finetune-batch-size", "100000",
     words=["--finetune-batch-size", "no step"])
case("fvw", "--recalibrate-samples", "0", words=["--recalibrate-samples"])
case("fvw", "--method", "magnitude", "--class-groups", "2", words=["fvw only"])
case("fvw", "--method", "lottery", words=["lottery"])
case("fvw", "--aggregate", "x", words=["--aggregate"])
case("fvw", "--optimizer", "x", words=["--optimizer"])
case("fvw", "--data", "nope", words=["nope"])
CASES.append(pytest.param(["prune", "fvw", "{w}/ck", "--out", "{w}/out"], ["--sparsity"],
                          id="fvw:no --sparsity"))
CASES.append(pytest.param(["prune", "fvw", "{w}/" + MISSING, "--sparsity", "0.5", "--out",
                           "{w}/out"], [MISSING], id="fvw:missing checkpoint"))
CASES.append(pytest.param(["prune", "fvw", "{w}/badck", "--sparsity", "0.5", "--out",
                           "{w}/out"], ["config"], id="fvw:corrupt checkpoint"))
CASES.append(pytest.param(["prune", "lottery", "{w}/ck"], ["lottery", "neither"],
                          id="prune:unknown"))

# prune sliming
for v in NOT_FINITE:
    case("sliming", "--macs", v, words=["--macs"])
for v in ("0", "1", "1.5", "-0.5"):
    case("sliming", "--macs", v, words=["--macs", "0 < x < 1"])
case("sliming", "--params", "nan", words=["--params"])
case("sliming", "--params", "0.5", words=["exactly one"])
for v in ("nan", "1", "-0.1", "x"):
    case("sliming", "--min-ratio", v, words=["--min-ratio"])
case("sliming", "--min-channels", "0", words=["--min-channels"])
case("sliming", "--normalize", "x", words=["--normalize"])
case("sliming", "--method", "x", words=["--method"])
case("sliming", "--plan", "{w}/" + MISSING, words=["plan"])
case("sliming", "--macs", "0.5", "--min-channels", "16", "--latency-repeats", "0",
     words=["min_channels=16"])
for opt, v in (("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"), ("--patience", "-1"),
               ("--finetune-epochs", "-1"), ("--latency-repeats", "-1"), ("--seed", "-1")):
    case("sliming", "--finetune-epochs", "1", opt, v, words=[opt])
case("sliming", "--finetune-epochs", "2", "--finetune-batch-size", "100000",
     words=["no step"])
CASES.append(pytest.param(["prune", "sliming", "{w}/ck", "--out", "{w}/out"], ["exactly one"],
                          id="sliming:no budget"))
CASES.append(pytest.param(["prune", "sliming", "{w}/ck", "--plan", "{w}/" + MISSING, "--out",
                           "{w}/out"], [MISSING], id="sliming:missing plan"))

# bench
for v in ("", ",", "nan", "inf", "0", "1", "0.5,x", "-0.5"):
    case("bench", "--sparsity", v, words=["sparsity"])
case("bench", "--sparsity", "0.5,0.5", words=["repeats"])
for v in ("", "nan", "1.5"):
    CASES.append(pytest.param(["bench", "--base", "{w}/bases", "--seeds", "0", "--macs", v,
                               "--out", "{w}/out"], ["macs"], id=f"bench:--macs {v!r}"))
for v in ("", "-1", "x", "0,0", "4294967296"):
    case("bench", "--seeds", v, words=["seed"])
for v in ("", "lottery", "sliming"):
    case("bench", "--methods", v, words=["method" if v != "lottery" else "lottery"])
for opt, vals in (("--epochs", ("0",)), ("--keep", ("nan", "0", "1")), ("--samples", ("-1",)),
                  ("--lr", ("nan", "inf", "0")), ("--weight-decay", ("nan",)),
                  ("--patience", ("-1",)), ("--latency-repeats", ("-1",)),
                  ("--finetune-epochs", ("-1",)), ("--finetune-batch-size", ("0",))):
    for v in vals:
        case("bench", opt, v, words=[opt])
case("bench", "--finetune-batch-size", "100000", words=["no step"])
case("bench", "--recalibrate-samples", "0", words=["--recalibrate-samples"])
case("bench", "--model", "resnet32", words=["resnet32"])
case("bench", "--data", "nope", words=["nope"])
case("bench", "--base", "{w}/" + MISSING, words=[MISSING])
case("bench", "--macs", "0.5", words=["not both"])

# export
for onnx, words in (("", ["--onnx"]), ("{w}/afile/m.onnx", ["not a folder"]),
                    ("{w}/ro/m.onnx", ["not writable"]), ("{w}/bases", ["--onnx"]),
                    ("{w}/ck/model.safetensors", [".onnx"]), ("{w}/m.txt", [".onnx"])):
    case("export", "--onnx", onnx, words=words)
for v in ("0", "4097", "x", "nan"):
    case("export", "--onnx", "{w}/m.onnx", "--input-size", v, words=["--input-size"])
CASES.append(pytest.param(["export", "{w}/" + MISSING, "--onnx", "{w}/m.onnx"], [MISSING],
                          id="export:missing folder"))
CASES.append(pytest.param(["export", "{w}/badck", "--onnx", "{w}/m.onnx"], ["config"],
                          id="export:corrupt checkpoint"))
CASES.append(pytest.param(["export", "{w}/ck"], ["--onnx"], id="export:no --onnx"))

# report
for folder, words in (("{w}/" + MISSING, ["not found"]), ("{w}/rep_empty", ["not found"]),
                      ("{w}/rep_corrupt", ["corrupt"]), ("{w}/rep_types", ["kind"]),
                      ("{w}/rep_accuracy", ["accuracy.dense.test"]),
                      ("{w}/rep_list", ["object"]), ("{w}/rep_sparsity", ["sparsity"]),
                      ("{w}/rep_runs", ["runs.x"]), ("{w}/ro/rep", ["not writable"]),
                      ("{w}/afile", ["afile"])):
    CASES.append(pytest.param(["report", folder], words, id=f"report:{folder}"))

# toy
for v in ("-1", "x", "4294967296", "nan"):
    case("toy", "--seed", v, words=["--seed"])
case("toy", "extra", words=["extra"])
case("toy", "--bogus", words=["--bogus"])
CASES.append(pytest.param(["toy", "nope"], ["nope"], id="toy:unknown"))

# demo
for opt, vals in (("--epochs", ("0", "-1", "x")), ("--seed", ("-1", "x")),
                  ("--recalibrate-samples", ("x",))):
    for v in vals:
        case("demo", opt, v, words=[opt])
case("demo", "--recalibrate-samples", "0", words=["--recalibrate-samples"])
case("demo", "--device", "tpu", words=["device"])
CASES.append(pytest.param(["nope"], ["nope"], id="unknown command"))


def test_the_table_is_large():
    assert len(CASES) >= 150, len(CASES)
    covered = {p.values[0][0] if p.values[0][0] != "prune" else p.values[0][1] for p in CASES}
    assert {"train", "eval", "info", "fvw", "sliming", "bench", "export", "report", "toy",
            "demo"} <= covered


@pytest.fixture
def work_log(monkeypatch):
    """The expensive steps a command may start (training, measuring), each recorded when
    called: a bad input must be refused before any of them, however fast the machine. (A
    budget that only the model's analysis can show to be infeasible is refused by the pruning
    engine itself, which is why the engines are not on this list.)"""
    from prunewise import runs, train

    log = []
    for module, name in ((train, "fit"), (runs, "measure_dense")):
        real = getattr(module, name)

        def spy(*a, _real=real, _name=name, **kw):
            log.append(_name)
            return _real(*a, **kw)
        monkeypatch.setattr(module, name, spy)
    return log


@pytest.mark.parametrize("args, words", CASES)
def test_bad_input_is_exit_2_one_line_nothing_written(in_world, work_log, args, words):
    w = in_world
    args = [a.format(w=w) for a in args]
    words = [x.format(w=w) for x in words]
    before = snapshot(w)
    r = invoke(*args)
    assert_bad_input(r, *words)
    assert "Traceback" not in r.stdout
    assert snapshot(w) == before, "a refused command changed files"
    assert not work_log, f"refused only after {work_log[0]} had started: the check comes too late"


# ---- output paths, OSError, report file names ----------------------------------------------

def test_empty_out_never_writes_into_the_current_folder(in_world):
    """`--out ""` once wrote into the current folder and replaced its model.safetensors."""
    save_digits_model(in_world / "cwd")
    os.chdir(in_world / "cwd")
    before = snapshot(in_world / "cwd")
    for args in (["train", "resnet20", "--epochs", "1"],
                 ["prune", "fvw", str(in_world / "ck"), "--sparsity", "0.5"]):
        assert_bad_input(invoke(*args, "--out", ""), "--out")
    assert snapshot(in_world / "cwd") == before


def test_prune_never_writes_over_its_input_checkpoint(world, tmp_path):
    """Re-pruning a run's model into the same run folder would replace the model it reads."""
    run = tmp_path / "run"
    save_digits_model(run / "model", seed=3)
    before = snapshot(run)
    (tmp_path / "link").symlink_to(run / "model")
    outs = [run, run / "model", run / "model" / "inner", tmp_path / "link"]
    for args in (["prune", "fvw", run / "model", "--sparsity", "0.5"],
                 ["prune", "sliming", run / "model", "--macs", "0.5"]):
        for out in outs:  # the model's run folder, the checkpoint itself, inside it, a link to it
            assert_bad_input(invoke(*args, "--out", out), "into the input checkpoint")
    assert snapshot(run) == before


def test_out_is_checked_before_any_work(world, tmp_path, monkeypatch):
    from prunewise import runs, train

    def boom(*a, **kw):
        raise AssertionError("work started before the output path was checked")

    for name in ("run_unstructured", "run_structured"):
        monkeypatch.setattr(runs, name, boom)
    monkeypatch.setattr(train, "fit", boom)
    monkeypatch.setattr(checkpoints, "load_model", boom)
    for args in (["train", "resnet20", "--epochs", "1"],
                 ["prune", "fvw", world / "ck", "--sparsity", "0.5"],
                 ["prune", "sliming", world / "ck", "--macs", "0.5"],
                 ["bench", "--base", world / "bases", "--seeds", "0", "--sparsity", "0.5"],
                 ["demo", "--quick"]):
        assert_bad_input(invoke(*args, "--out", world / "afile"), "is a file")
    assert_bad_input(invoke("export", world / "ck", "--onnx", world / "afile" / "m.onnx"),
                     "not a folder")


def test_oserror_on_our_paths_is_exit_2_one_line(world, tmp_path, monkeypatch):
    def denied(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    report.write(tmp_path / "rep", sample_run(), kind="prune-unstructured")
    monkeypatch.setattr(files, "write_json", denied)
    assert_bad_input(invoke("report", tmp_path / "rep"), "Permission denied", "report.json")


@pytest.mark.parametrize("name", ["../../escape", "/tmp/absolute", "..", ".hidden", "a/b/c",
                                  "x" * 500, "", "ünï cödé", "a\\b", "nul\0byte"])
def test_report_run_names_cannot_leave_the_folder(tmp_path, name):
    folder = tmp_path / "deep" / "rep"
    rep = {"seed": 0, "seconds": 1.0, "model": "resnet20",
           "accuracy": {"dense": stage(0.9)}, "runs": {name: sample_run()}}
    report.write(folder, rep, kind="demo")
    outside = [p for p in tmp_path.rglob("*") if folder not in p.parents and p != folder
               and p not in folder.parents]
    assert outside == []
    written = report.render(folder)["plots"]
    assert written and all(report.UNSAFE.search(p) is None and not p.startswith(".")
                           and len(p) <= report.MAX_FILE_NAME + 4 for p in written)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["report.json", "report.md", *written])


def test_safe_name():
    assert report.safe_name("../../x") == "_.._x"
    assert report.safe_name("/abs/p") == "_abs_p"
    assert report.safe_name("...") == "run"
    assert report.safe_name("fvw-0.9_a") == "fvw-0.9_a"
    assert len(report.safe_name("y" * 999)) == report.MAX_FILE_NAME


def test_finite_float_type():
    t = options.FiniteFloat(0, 1, min_open=True)
    assert t.convert("0.5", None, None) == 0.5 and t.convert("1", None, None) == 1.0
    for bad in ("nan", "inf", "-inf", "0", "1.01", "x", ""):
        with pytest.raises(Exception, match="finite|range|not a number"):
            t.convert(bad, None, None)


# ---- resume after a kill ----------------------------------------------------------------------

def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items()
                if k not in ("seconds", "stage_seconds", "command")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def bench_process(args, out: Path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "prunewise", "bench", *map(str, args),
                             "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cells(out: Path) -> dict:
    return {p.name: without_timings(json.loads(p.read_text()))
            for p in sorted((out / "cells").glob("*.json"))}


def test_bench_killed_between_two_levels_resumes_to_identical_cells(world, tmp_path):
    args = ["--methods", "magnitude", "--sparsity", "0.3,0.6", "--seeds", "0",
            "--base", world / "bases", "--keep", "0.7", "--finetune-epochs", "1",
            "--recalibrate-samples", "64", "--latency-repeats", "0", "--quiet"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    p = bench_process(args, killed)
    deadline = time.time() + 1800  # a hang guard, not a speed limit
    while not list((killed / "cells").glob("*.json")) and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    done = sorted(c.name for c in (killed / "cells").glob("*.json"))
    assert done == ["magnitude-0.3-s0.json"], done  # killed between the two levels
    first = (killed / "cells" / done[0]).stat().st_mtime_ns
    for out in (killed, full):
        p = bench_process(args, out)
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert (killed / "cells" / done[0]).stat().st_mtime_ns == first  # not recomputed
    assert cells(killed) == cells(full) and len(cells(full)) == 2
    assert not [p for p in killed.rglob("*") if files.TMP_MARK in p.name]


FVW = ("--sparsity", "0.9", "--keep", "0.5", "--samples", "64", "--alpha", "1e-4",
       "--finetune-epochs", "1", "--recalibrate-samples", "64", "--latency-repeats", "0",
       "--quiet")


def fvw_outputs(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    return {"masks": load_file(str(out / "masks.safetensors")),
            "model": load_file(str(out / "model" / checkpoints.WEIGHTS)),
            "report": without_timings({k: rep[k] for k in ("accuracy", "sparsity", "params",
                                                           "iterations")})}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def fvw_full(world, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fvw-full")
    r = invoke("prune", "fvw", world / "ck", *FVW, "--out", out)
    assert r.returncode == 0, r.stderr
    return fvw_outputs(out)


@pytest.mark.parametrize("where", ["after-iteration-1", "writing-resume-3", "writing-report"])
def test_prune_fvw_killed_resumes_bit_identical(world, tmp_path, monkeypatch, fvw_full, where):
    out = tmp_path / "run"
    real_tensors, real_report = files.write_tensors, report.write
    seen = []

    def write_tensors(path, tensors, metadata=None):
        if Path(path).name != "resume.safetensors":
            return real_tensors(path, tensors, metadata)
        seen.append(path)
        if where == "writing-resume-3" and len(seen) == 3:  # killed half way through the write
            part = Path(path).parent / f".{Path(path).name}{files.TMP_MARK}{dead_pid()}-x1y2"
            part.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\"")
            os.utime(part, (1e9, 1e9))
            raise KeyboardInterrupt
        real_tensors(path, tensors, metadata)
        if where == "after-iteration-1" and len(seen) == 1:
            raise KeyboardInterrupt

    def write_report(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_tensors", write_tensors)
    if where == "writing-report":
        monkeypatch.setattr(report, "write", write_report)
    assert invoke("prune", "fvw", world / "ck", *FVW, "--out", out).returncode == 130
    assert not (out / "report.json").exists()
    again = []
    monkeypatch.setattr(files, "write_tensors", lambda path, *a, **kw: (
        again.append(Path(path).name == "resume.safetensors"), real_tensors(path, *a, **kw))[1])
    monkeypatch.setattr(report, "write", real_report)
    r = invoke("prune", "fvw", world / "ck", *FVW, "--out", out)
    assert r.returncode == 0, r.stderr
    iterations = fvw_full["report"]["iterations"]
    done = {"after-iteration-1": 1, "writing-resume-3": 2, "writing-report": iterations}[where]
    assert sum(again) == iterations - done  # resumed: finished iterations are not redone
    got = fvw_outputs(out)
    assert got["report"] == fvw_full["report"]
    for key in ("masks", "model"):
        assert got[key].keys() == fvw_full[key].keys()
        assert all(torch.equal(got[key][k], fvw_full[key][k]) for k in got[key])
    assert not [p for p in out.rglob("*") if files.TMP_MARK in p.name]


def test_dangling_symlink_and_loop_as_out_are_refused_before_work(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name in ("dangling", "loop"):
        r = invoke("train", "resnet20", "--epochs", "1", "--out", tmp_path / name)
        assert_bad_input(r, "--out", "symbolic link")
        assert not (tmp_path / "nowhere").exists()


def test_a_name_that_is_not_utf8_is_refused(tmp_path, digits_checkpoint):
    bad = str(tmp_path / b"m\xff.onnx".decode("utf-8", "surrogateescape"))
    r = invoke("export", digits_checkpoint, "--onnx", bad)
    assert_bad_input(r, "--onnx", "UTF-8")


# ------------------------------------------------------------------ write failures and digests
@contextlib.contextmanager
def small_files():
    """Files may grow to 20 kB in this block (writes past it fail with EFBIG, as on a full disk)."""
    import resource
    import signal

    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@pytest.mark.parametrize("args, name", [
    (["prune", "fvw", "{ck}", "--method", "magnitude", "--sparsity", "0.5", "--quiet",
      "--out", "{out}"], "safetensors"),
    (["prune", "sliming", "{ck}", "--macs", "0.5", "--quiet", "--out", "{out}"],
     "model.safetensors"),
    (["export", "{ck}", "--onnx", "{out}/m.onnx"], "m.onnx"),
])
def test_a_write_that_fails_is_one_line_naming_the_file(tmp_path, digits_checkpoint, args, name):
    out = tmp_path / "out"
    old = tmp_path / "out" / "keep.txt"
    out.mkdir()
    old.write_text("written before")
    args = [a.format(ck=digits_checkpoint, out=out) for a in args]
    before = {p: p.read_bytes() for p in digits_checkpoint.rglob("*") if p.is_file()}
    with small_files():
        r = invoke(*args)
    assert_bad_input(r, "could not write", name, "File too large")
    assert old.read_text() == "written before"
    assert {p: p.read_bytes() for p in digits_checkpoint.rglob("*") if p.is_file()} == before
    assert not [p for p in out.rglob("*") if files.TMP_MARK in p.name]


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs /proc/self/mem")
def test_an_input_that_fails_on_read_is_one_line_naming_it(tmp_path, digits_checkpoint):
    """/proc/self/mem is a regular file that fails on read (EIO): a symlink to it stands for a
    device or a network file that breaks while we read it."""
    import shutil

    for name in ("config.json", "model.safetensors"):
        ck = tmp_path / name / "ck"
        shutil.copytree(digits_checkpoint, ck)
        (ck / name).unlink()
        (ck / name).symlink_to("/proc/self/mem")
        for command in ("eval", "info"):
            assert_bad_input(invoke(command, ck), "cannot read", str(ck / name),
                             "Input/output error")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").symlink_to("/proc/self/mem")
    assert_bad_input(invoke("report", tmp_path / "run"), "cannot read report", "report.json")
    (tmp_path / "t.safetensors").symlink_to("/proc/self/mem")
    r = invoke("train", "resnet20", "--data", "tensors", "--root", tmp_path / "t.safetensors",
               "--epochs", "1", "--out", tmp_path / "t")
    assert_bad_input(r, "cannot read", "t.safetensors")
    assert not (tmp_path / "t").exists()


def test_ctrl_c_and_sigterm_are_one_documented_line(monkeypatch):
    """Ctrl-C: `prunewise: interrupted`, exit 130; SIGTERM unwinds the same way (temp files
    cleaned, resume files kept): `prunewise: terminated`, exit 143."""
    from prunewise import cli
    from prunewise.cli import output

    for raised, code, word in ((KeyboardInterrupt(), 130, "interrupted"),
                               (cli.Terminated(), 143, "terminated")):
        def stop(rows, raised=raised):
            raise raised
        monkeypatch.setattr(output, "method_table", stop)
        r = invoke("methods")
        assert r.returncode == code
        assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [f"prunewise: {word}"]


def test_a_real_sigterm_ends_a_training_run_with_143(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen([sys.executable, "-m", "prunewise", "train", "resnet20", "--data",
                          "digits", "--epochs", "200", "--out", str(tmp_path / "ck")],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "ck").exists() and p.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1] == "prunewise: terminated"
    assert not (tmp_path / "ck" / "model.safetensors").exists()


@pytest.mark.parametrize("root", [5, ["a"], "", {"x": 1}])
def test_a_saved_data_root_that_is_not_a_path_is_refused(world, tmp_path, root):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(world / "ck", ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg.setdefault("meta", {}).setdefault("data", {"name": "digits"})["root"] = root
    (ck / "config.json").write_text(json.dumps(cfg))
    assert_bad_input(invoke("eval", ck), "meta.data.root must be a string")


@pytest.mark.parametrize("alpha, words", [("1e300", "does not fit the weights"),
                                          ("1e30", "made the loss")])
def test_an_fvw_step_that_overflows_is_one_line(world, tmp_path, alpha, words):
    r = invoke("prune", "fvw", world / "ck", "--sparsity", "0.5", "--samples", "32",
               "--alpha", alpha, "--latency-repeats", "0", "--quiet", "--out", tmp_path / "o")
    assert_bad_input(r, words, "alpha")


def test_commands_that_read_a_model_take_a_run_folder(world, tmp_path):
    """eval / info / export read a prune run's --out (its model/ folder); report names the run
    folder when given the model folder; a folder that is neither says which path to pass."""
    out = tmp_path / "run"
    r = invoke("prune", "sliming", world / "ck", "--macs", "0.5", "--no-repair",
               "--latency-repeats", "0", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    via_run, via_model = invoke("eval", out, "--json"), invoke("eval", out / "model", "--json")
    assert via_run.returncode == 0 and json.loads(via_run.stdout) == json.loads(via_model.stdout)
    assert invoke("info", out, "--json").returncode == 0
    assert invoke("export", out, "--onnx", tmp_path / "m.onnx").returncode == 0
    assert_bad_input(invoke("report", out / "model"), "the run's report is in its folder",
                     str(out))
    assert_bad_input(invoke("eval", tmp_path), "is not a checkpoint", "prune run's --out")


@pytest.mark.parametrize("where", ["proc", "sys", "long", "deep"])
def test_output_paths_are_tried_for_real_before_work(world, tmp_path, where):
    """Permissions say yes to root everywhere: the check makes and removes a file in the
    nearest existing folder and checks the names' lengths, so /proc, /sys and over-long names
    fail before any work, and nothing is left behind."""
    if where in ("proc", "sys") and not Path(f"/{where}").is_dir():
        pytest.skip(f"no /{where} here")
    out = {"proc": Path("/proc/prunewise-out"), "sys": Path("/sys/prunewise-out"),
           "long": tmp_path / "new" / ("a" * 300),
           "deep": tmp_path / "/".join(["d" * 200] * 25)}[where]
    before = sorted(tmp_path.rglob("*"))
    r = invoke("prune", "sliming", world / "ck", "--macs", "0.5", "--latency-repeats", "0",
               "--quiet", "--out", out)
    assert_bad_input(r, "--out")
    assert sorted(tmp_path.rglob("*")) == before


def test_one_writer_per_output_folder(world, tmp_path):
    """A folder another live run holds is refused at once, naming its process; a lock left by
    a process that is gone is taken over; a finished run leaves no lock behind."""
    import subprocess
    import sys

    from prunewise.cli.options import LOCK

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{holder.pid}\n")
        before = sorted(out.rglob("*"))
        r = invoke("prune", "sliming", world / "ck", "--macs", "0.5", "--latency-repeats", "0",
                   "--quiet", "--no-repair", "--out", out)
        assert_bad_input(r, "in use by another prunewise run", f"process {holder.pid}")
        assert sorted(out.rglob("*")) == before
        r = invoke("train", "resnet20", "--data", "digits", "--epochs", "1", "--out", out)
        assert_bad_input(r, "in use", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK).write_text(f"{dead_pid()}\n")    # stale: its process has ended
    r = invoke("prune", "sliming", world / "ck", "--macs", "0.5", "--latency-repeats", "0",
               "--quiet", "--no-repair", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "report.json").is_file() and not (out / LOCK).exists()
    # a refused run under a folder it had to make leaves nothing
    r = invoke("prune", "sliming", tmp_path / "none", "--macs", "0.5", "--out",
               tmp_path / "a" / "b")
    assert_bad_input(r, "not found")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind, words", [
    ("uint8", "stores its inputs as uint8"), ("int64", "as int64"), ("float16", "as float16"),
    ("bfloat16", "as bfloat16"), ("float64", "as float64"), ("bool", "as bool"),
    ("flat", "samples of shape [256]"), ("dict", "named inputs"),
    ("rank5", "samples of shape [1, 1, 16, 16]")])
def test_zoo_models_refuse_stored_inputs_they_cannot_take(tmp_path, kind, words):
    from safetensors.torch import save_file

    y = torch.arange(60) % 10
    x = {"flat": torch.rand(60, 256), "rank5": torch.rand(60, 1, 1, 16, 16)}.get(kind)
    if x is None and kind != "dict":
        x = (torch.rand(60, 1, 16, 16) * 255).to(getattr(torch, kind)) if kind != "bool" \
            else torch.rand(60, 1, 16, 16) > 0.5
    parts = {"train.x.a": torch.rand(60, 1, 16, 16), "test.x.a": torch.rand(60, 1, 16, 16)} \
        if kind == "dict" else {"train.x": x, "test.x": x.clone()}
    save_file({**parts, "train.y": y, "test.y": y.clone()}, str(tmp_path / "d.safetensors"))
    r = invoke("train", "resnet20", "--data", "tensors", "--root", tmp_path / "d.safetensors",
               "--epochs", "1", "--batch-size", "20", "--out", tmp_path / "ck")
    assert_bad_input(r, words)
    assert not (tmp_path / "ck").exists()
