"""The CLI: exit codes (0 ok, 2 bad input with a one-line message), JSON outputs, the prune
commands' outputs. In-process through ``cli.main`` (whose code the console script's
``cli.entry`` exits with); three subprocess smoke tests check the real process and the
installed script."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from helpers import assert_bad_input, invoke, run
from prunewise import data as D
from prunewise import checkpoints, measure, models, report, runs, train
from prunewise.plan import MaskPlan

SCHEMA = json.loads(report.SCHEMA_PATH.read_text())
FAST = ("--samples", "64", "--keep", "0.5", "--repair-samples", "32", "--latency-repeats", "1",
        "--quiet")


@pytest.fixture(scope="module")
def bundle():
    return D.load("digits", image_size=16, seed=0)


@pytest.fixture(scope="module")
def fvw_run(digits_checkpoint, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fvw") / "p"
    r = invoke("prune", "fvw", digits_checkpoint, "--sparsity", "0.5", "--alpha", "1e-4",
               "--finetune-epochs", "1", *FAST, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture(scope="module")
def sliming_run(digits_checkpoint, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sliming") / "s"
    r = invoke("prune", "sliming", digits_checkpoint, "--macs", "0.5", "--finetune-epochs", "1",
               "--latency-repeats", "2", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def load_report(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    jsonschema.validate(rep, SCHEMA)
    assert set(rep["accuracy"]) == set(runs.STAGES)
    return rep


# ---- subprocess smoke tests: the real process and the console script ---------------------------

def test_console_script_help_is_exit_0():
    script = shutil.which("prunewise") or str(Path(sys.executable).parent / "prunewise")
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout and "bench" in r.stdout


def test_process_bad_input_is_exit_2_one_line():
    assert_bad_input(run("info", "resnet21"), "resnet21", "resnet20")


def test_process_prune_missing_checkpoint_is_exit_2(tmp_path):
    assert_bad_input(run("prune", "fvw", tmp_path / "nope", "--sparsity", "0.5",
                         "--out", tmp_path / "o"), "nope")


# ---- info, train, eval, export ----------------------------------------------------------------

def test_info_json_resnet56():
    r = invoke("info", "resnet56", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["macs"] == 125_485_696
    assert abs(info["params"] - 0.85e6) / 0.85e6 < 0.01


def test_info_input_size_and_classes():
    info = json.loads(invoke("info", "resnet20", "--num-classes", "100", "--input-size", "16",
                             "--json").stdout)
    r32 = json.loads(invoke("info", "resnet20", "--num-classes", "100", "--json").stdout)
    assert info["input_size"] == 16 and r32["input_size"] == 32
    assert info["params"] == r32["params"]
    assert r32["macs"] - 4 * info["macs"] == -3 * 64 * 100  # convs scale with area, fc not


@pytest.mark.parametrize("args, words", [
    (["info", "resnet21"], ["resnet21", "resnet20"]),
    (["train", "resnet20", "--data", "nope", "--out", "{tmp}/o"], ["nope", "digits"]),
    (["train", "resnet20", "--data", "cifar10", "--root", "{tmp}", "--out", "{tmp}/o"],
     ["data_batch_1"]),
    (["train", "resnet20", "--num-classes", "7", "--out", "{tmp}/o"], ["7", "10"]),
    (["eval", "{tmp}/nope"], ["nope"]),
])
def test_bad_input_is_exit_2(tmp_path, args, words):
    assert_bad_input(invoke(*[a.format(tmp=tmp_path) for a in args]), *words)


def test_corrupt_checkpoint_is_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    assert_bad_input(invoke("eval", tmp_path), "config")


def test_train_then_eval_and_classes_mismatch(tmp_path, bundle):
    out = tmp_path / "ck"
    r = invoke("train", "resnet20", "--epochs", "1", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    r = invoke("eval", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    model = checkpoints.load_model(out)
    assert res["data"] == "digits"
    assert res["top1"] == train.evaluate_split(model, bundle, "test")["top1"]
    assert model.prunewise_meta["test_accuracy"] == res["top1"]
    assert model.prunewise_meta["data"]["name"] == "digits"
    from PIL import Image  # a checkpoint with 10 outputs evaluated on a 3-class image folder
    for split in ("train", "val"):
        for c in "abc":
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 30, 10, 10)).save(d / f"{i}.png")
    assert_bad_input(invoke("eval", out, "--data", "imagefolder", "--root", tmp_path / "imgs"),
                     "num_classes=10", "3 classes")


def test_export_a_masked_model_to_onnx(fvw_run, tmp_path):
    import onnxruntime as ort

    out, _ = fvw_run
    r = invoke("export", out, "--onnx", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "input 1x1x16x16" in r.stdout
    model = checkpoints.load_model(out / "model").eval()
    x = torch.randn(3, 1, 16, 16)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


# ---- prune fvw ---------------------------------------------------------------------------------

def test_prune_fvw_report_and_saved_model(fvw_run, bundle):
    out, r = fvw_run
    rep = load_report(out)
    assert rep["method"] == "fvw" and rep["iterations"] == 1
    assert abs(rep["sparsity"] - 0.5) < 1e-5
    saved = checkpoints.load_model(out / "model")  # the fine-tuned model the report measured
    assert rep["accuracy"]["finetuned"]["test"] == train.evaluate_split(saved, bundle, "test")["top1"]
    assert rep["params"]["pruned"] == measure.params(saved, nonzero=True)
    assert rep["macs"]["counted"] == "nonzero weights"
    assert rep["macs"]["pruned"] < rep["macs"]["dense"]
    assert set(rep["latency_ms"]) == {"1", "64"}
    plan = MaskPlan.load(out)
    assert plan.sparsity == rep["sparsity"]
    params = dict(saved.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in plan.masks.items())
    assert f"{rep['accuracy']['finetuned']['test']:.4f} fine-tuned" in r.stdout
    md = (out / "report.md").read_text()
    assert "| fvw |" in md and "![history.png](history.png)" in md
    assert not (out / "resume").exists()  # a finished run removes its resume file
    assert all(row["speedup"] is None for row in rep["latency_ms"].values())  # masks: no speed-up
    text = repr(plan)
    assert "\n" not in text and len(text) < 200 and "sparsity=0.5000" in text


def test_leftover_resume_is_refused_before_measuring(digits_checkpoint, tmp_path, monkeypatch):
    """A resume file from other settings is refused when the loop starts, before the dense model
    is measured or anything is trained."""
    from prunewise import runs

    out = tmp_path / "p"
    args = ["prune", "fvw", digits_checkpoint, "--sparsity", "0.5", *FAST]
    first = invoke(*args, "--out", out)  # a finished run leaves no resume file ...
    assert first.returncode == 0 and not (out / "resume").exists()
    (out / "resume").mkdir()  # ... so plant a resume file made with other settings
    plan = MaskPlan.load(out)
    from prunewise import files
    files.write_tensors(out / "resume" / "resume.safetensors", plan.masks, metadata={
        "config": json.dumps({"method": "fvw", "keep": 0.123}), "iteration": "1",
        "history": json.dumps([{"iteration": 1, "kept": plan.kept, "sparsity": 0.5}])})
    measured = []
    monkeypatch.setattr(runs, "measure_dense", lambda *a, **kw: measured.append(1))
    r = invoke(*args, "--out", out)
    assert r.returncode == 2 and "different settings" in r.stderr and not measured


@pytest.mark.parametrize("method", ["taylor", "random"])
def test_prune_baseline_methods(digits_checkpoint, tmp_path, method):
    r = invoke("prune", "fvw", digits_checkpoint, "--method", method, "--sparsity", "0.6", *FAST,
               "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rep = load_report(tmp_path)
    plan = MaskPlan.load(tmp_path)
    assert rep["method"] == plan.method == method and rep["config"]["method"] == method
    assert abs(plan.sparsity - 0.6) < 1e-5
    # no fine-tuning: repaired by default instead of recalibrated, and the config says so
    assert rep["accuracy"]["repaired"] is not None and rep["accuracy"]["finetuned"] is None
    assert rep["accuracy"]["recalibrated"] is None
    assert rep["config"]["prune"]["repair"]["enabled"] is True


def test_prune_exclude_leaves_the_named_layers_dense(digits_checkpoint, tmp_path):
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.6",
               "--exclude", "fc", "--exclude", "layer3.2.*", *FAST, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    plan = MaskPlan.load(tmp_path)
    assert "fc.weight" not in plan.masks and "layer3.1.conv2.weight" in plan.masks
    assert not any(k.startswith("layer3.2.") for k in plan.masks)
    assert abs(plan.sparsity - 0.6) < 1e-5  # over the layers still pruned
    dense, saved = checkpoints.load_model(digits_checkpoint), checkpoints.load_model(tmp_path / "model")
    assert torch.equal(dense.fc.weight, saved.fc.weight)
    assert torch.equal(dense.layer3[2].conv1.weight, saved.layer3[2].conv1.weight)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_recalibration_switch(digits_checkpoint, tmp_path, recalibrate):
    flags = ["--recalibrate-samples", "64"] if recalibrate else ["--no-recalibrate"]
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.5",
               *FAST, *flags, "--no-repair", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rep = load_report(tmp_path)
    assert (rep["accuracy"]["recalibrated"] is not None) == recalibrate
    assert rep["accuracy"]["repaired"] is None
    assert rep["config"]["prune"]["repair"]["enabled"] is False
    assert rep["config"]["recalibration"] == {"samples": 64 if recalibrate else 512,
                                              "enabled": recalibrate, "batch_size": 128}
    dense, saved = checkpoints.load_model(digits_checkpoint), checkpoints.load_model(tmp_path / "model")
    same = torch.equal(dense.bn1.running_var, saved.bn1.running_var)
    assert same != recalibrate  # without recalibration the dense statistics stay


def test_adam_patience_and_finetune_options_reach_training(digits_checkpoint, tmp_path,
                                                          monkeypatch):
    seen = {}
    real_fit, real_opt = train.fit, train.make_optimizer

    def fit(model, bundle, settings, **kw):
        seen.update(vars(settings), **kw)
        return real_fit(model, bundle, settings, **kw)

    def make_optimizer(model, name, *a, **kw):
        seen["made"] = name
        return real_opt(model, name, *a, **kw)

    monkeypatch.setattr(train, "fit", fit)
    monkeypatch.setattr(train, "make_optimizer", make_optimizer)
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.5",
               *FAST, "--finetune-epochs", "1", "--optimizer", "adam", "--patience", "4",
               "--weight-decay", "0", "--finetune-batch-size", "256", "--lr", "0.002",
               "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert seen["made"] == "adam" and seen["patience"] == 4 and seen["batch_size"] == 256
    assert seen["weight_decay"] == 0 and seen["lr"] == 0.002 and seen["masks"] is not None
    rep = load_report(tmp_path)
    assert rep["finetune"]["epochs_run"] == 1 and rep["accuracy"]["finetuned"] is not None


@pytest.mark.parametrize("args, word", [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "0.5", "--alpha", "0"], "alpha"),
    (["--sparsity", "0.5", "--method", "magnitude", "--class-groups", "2"], "fvw only"),
    (["--sparsity", "0.5", "--samples", "-1"], "--samples"),
    (["--sparsity", "0.5", "--recalibrate-samples", "0"], "--recalibrate-samples"),
    (["--sparsity", "0.5", "--latency-repeats", "-1"], "--latency-repeats"),
    (["--sparsity", "0.5", "--finetune-epochs", "-1"], "epochs"),
    (["--sparsity", "0.5", "--exclude", "fcc"], "'fcc' matches no prunable layer"),
    (["--sparsity", "0.5", "--exclude", "*"], "leave no layer to prune"),
])
def test_prune_fvw_bad_input_writes_nothing(digits_checkpoint, tmp_path, args, word):
    assert_bad_input(invoke("prune", "fvw", digits_checkpoint, *args, "--out", tmp_path / "o"),
                     word)
    assert not (tmp_path / "o").exists()


# ---- prune sliming -----------------------------------------------------------------------------

def test_prune_sliming_report_model_and_speed(sliming_run):
    out, r = sliming_run
    assert "layer1.0.conv1" in r.stdout  # the per-layer table
    rep = load_report(out)
    assert rep["method"] == "sliming" and 0.49 <= rep["macs"]["ratio"] <= 0.5
    assert rep["latency_ms"]["64"]["speedup"] > 0
    assert (out / "spectra.png").stat().st_size > 1000
    model = checkpoints.load_model(out / "model")
    assert measure.macs(model, torch.zeros(1, 1, 16, 16)) == rep["macs"]["pruned"]
    row = next(line for line in (out / "report.md").read_text().splitlines()
               if line.startswith("| sliming |"))
    assert row.count("|  |") == 0 and "x" in row  # every column filled, speed-up included


def test_saved_plan_reapplies_and_rejects_another_architecture(sliming_run, digits_checkpoint,
                                                              tmp_path):
    first, _ = sliming_run
    again = tmp_path / "again"
    r = invoke("prune", "sliming", digits_checkpoint, "--plan", first / "plan", "--quiet",
               "--latency-repeats", "0", "--no-recalibrate", "--out", again)
    assert r.returncode == 0, r.stderr
    a, b = load_report(first), load_report(again)
    assert a["macs"] == b["macs"] and a["accuracy"]["pruned"] == b["accuracy"]["pruned"]
    assert b["method"] == "sliming"
    other = tmp_path / "r32"
    checkpoints.save_model(models.create("resnet32", num_classes=10, in_channels=1), other,
                     meta={"data": {"name": "digits", "root": None, "image_size": 16, "seed": 0}})
    assert_bad_input(invoke("prune", "sliming", other, "--plan", first / "plan",
                            "--out", tmp_path / "bad"), "different architecture")


@pytest.mark.parametrize("method", ["l1", "chip"])
def test_structured_baselines(digits_checkpoint, tmp_path, method):
    r = invoke("prune", "sliming", digits_checkpoint, "--method", method, "--macs", "0.5",
               "--latency-repeats", "0", "--quiet", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rep = load_report(tmp_path)
    assert rep["method"] == method and rep["macs"]["ratio"] <= 0.5
    assert rep["accuracy"]["repaired"] is not None    # no fine-tuning: repaired by default


@pytest.mark.parametrize("args, words", [
    (["--macs", "1.5"], ["1.5", "0 < x < 1"]),
    (["--macs", "0.5", "--params", "0.5"], ["exactly one"]),
    ([], ["exactly one"]),
    (["--macs", "0.5", "--min-channels", "16", "--latency-repeats", "0"],
     ["floor", "min_channels=16"]),
    (["--macs", "0.5", "--no-recalibrate", "--recalibrate-samples", "0"], ["samples"]),
])
def test_prune_sliming_bad_input_writes_nothing(digits_checkpoint, tmp_path, args, words):
    assert_bad_input(invoke("prune", "sliming", digits_checkpoint, *args, "--out", tmp_path / "o"),
                     *words)
    assert not (tmp_path / "o").exists()


def test_progress_in_a_log_is_plain_lines(monkeypatch):
    """Output that is not a terminal (a log file) gets whole progress lines, at most one per
    LOG_INTERVAL seconds, instead of carriage-return redraws or nothing."""
    import contextlib
    import io

    from prunewise import utils

    monkeypatch.setattr(utils, "LOG_INTERVAL", 0.0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        bar = utils.progress_bar(3, "prune fvw")
        for _ in range(3):
            bar.update(1)
        bar.close()
        utils.progress_bar(3, "quiet", enabled=False).update(1)
    with contextlib.redirect_stderr(err):  # a bar opened inside another (fine-tuning a level)
        outer = utils.progress_bar(2, "prune fvw")
        inner = utils.progress_bar(2, "prune fvw: fine-tune")
        inner.update(2)
        inner.close()
        outer.update(2)
        outer.close()
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue() and lines and all(line.startswith("prune fvw") for line in lines)
    assert any("3/3" in line for line in lines) and "quiet" not in err.getvalue()
    monkeypatch.setattr(utils, "LOG_INTERVAL", 1000.0)  # a long run in a log: throttled
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        bar = utils.progress_bar(100, "prune fvw")
        for _ in range(100):
            bar.update(1)
            bar.set_postfix({"sparsity": "0.5"}, refresh=False)
        bar.close()
    assert len(err.getvalue().splitlines()) <= 2, err.getvalue()


@pytest.mark.parametrize("args, what", [
    (["--sparsity", "0.9_5"], "--sparsity"),
    (["--sparsity", "٠.٥"], "--sparsity"),          # Arabic-Indic digits
    (["--sparsity", "0.5", "--samples", "1_0"], "--samples"),
    (["--sparsity", "0.5", "--seed", "１"], "--seed"),   # a fullwidth digit
])
def test_numbers_are_written_with_ascii_digits(args, what, digits_checkpoint, tmp_path):
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", *args,
               "--out", tmp_path / "x")
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, what", [
    (["--seeds", "0,,1"], "empty"), (["--seeds", "1_0"], "integers"),
    (["--sparsity", "0.5,0.5000000001"], "same cell"), (["--sparsity", "0.5,"], "empty"),
    (["--base", "b{seed}{0}"], "only placeholder"), (["--base", "b{seed:300000000}"], "{seed}"),
    (["--base", "b{seed"], "no other braces"), (["--base", "x" * 100_000 + "}"], "braces"),
])
def test_bench_lists_are_strict(args, what, tmp_path):
    r = invoke("bench", *args, "--out", tmp_path / "g")
    assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr) < 400 and not (tmp_path / "g").exists()


@pytest.mark.parametrize("kind, shortcut, args", [
    ("masks", "fvw", ["--method", "magnitude", "--sparsity", "0.5", *FAST]),
    ("channels", "sliming", ["--method", "l1", "--macs", "0.5", "--latency-repeats", "1",
                             "--quiet"]),
])
def test_prune_any_method_equals_its_shortcut(digits_checkpoint, tmp_path, kind, shortcut,
                                              args):
    """`prune CHECKPOINT --method NAME` runs every method of the table; `prune fvw` and `prune
    sliming` are the same command with a kind: identical plans and scores."""
    one, two = tmp_path / "any", tmp_path / "shortcut"
    assert invoke("prune", digits_checkpoint, *args, "--out", one).returncode == 0
    assert invoke("prune", shortcut, digits_checkpoint, *args, "--out", two).returncode == 0
    a, b = load_report(one), load_report(two)
    assert a["scores"] == b["scores"] and a["kind"] == b["kind"] == (
        "prune-unstructured" if kind == "masks" else "prune-structured")
    if kind == "masks":
        assert MaskPlan.load(one).masks.keys() == MaskPlan.load(two).masks.keys()
        assert all(torch.equal(MaskPlan.load(one).masks[k], MaskPlan.load(two).masks[k])
                   for k in MaskPlan.load(one).masks)
    else:
        assert a["counts"] == b["counts"]


@pytest.mark.parametrize("args, words", [
    (["fvw", "{ck}", "--macs", "0.5"], ["--macs", "channel methods", "mask method"]),
    (["sliming", "{ck}", "--sparsity", "0.5"], ["--sparsity", "mask methods"]),
    (["sliming", "{ck}", "--method", "wanda", "--macs", "0.5"], ["'wanda'", "prune CHECKPOINT"]),
    (["{ck}", "--method", "l1", "--macs", "0.5", "--alpha", "1e-3"], ["--alpha", "fvw"]),
    (["{ck}", "--method", "magnitude", "--macs", "0.5"], ["--macs", "mask method"]),
    (["{ck}", "--method", "magnitude"], ["--sparsity"]),
    (["{ck}", "--sparsity", "0.5"], ["--method"]),
])
def test_prune_refuses_options_of_the_other_kind(digits_checkpoint, tmp_path, args, words):
    out = tmp_path / "out"
    r = invoke("prune", *[a.format(ck=digits_checkpoint) for a in args], "--out", out)
    assert_bad_input(r, *words)
    assert not out.exists()


def test_options_made_from_the_settings_keep_their_meaning(digits_checkpoint, tmp_path):
    """`--samples 0` is 'all' (None), an option not given keeps the settings' default, and the
    help shows the default declared in prunewise.settings."""
    from prunewise import settings

    r = invoke("prune", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.5",
               "--samples", "0", "--latency-repeats", "0", "--quiet", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    prune = load_report(tmp_path / "a")["config"]["prune"]
    assert prune["samples"] is None and prune["keep"] is None
    assert prune["batch_size"] == settings.default(settings.Unstructured, "batch_size")
    text = invoke("prune", "fvw", "--help").stdout
    assert f"{settings.default(settings.Unstructured, 'samples')}" in text
    assert f"{settings.FineTune().lr}" in text and f"{settings.Recalibration().samples}" in text
    bench_help = invoke("bench", "--help").stdout
    assert f"{settings.BENCH_PRUNE.samples}" in bench_help


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_nm_option_prunes_every_row_in_groups(digits_checkpoint, tmp_path, method):
    r = invoke("prune", digits_checkpoint, "--method", method, "--nm", "2:4",
               "--latency-repeats", "0", "--quiet", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    plan = MaskPlan.load(tmp_path)
    assert plan.sparsity == 0.5 and plan.meta["settings"]["nm"] == [2, 4]
    for m in plan.masks.values():
        assert bool((m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all())
    bad = invoke("prune", digits_checkpoint, "--method", "magnitude", "--nm", "2:4",
                 "--allocation", "lamp", "--out", tmp_path / "x")
    assert_bad_input(bad, "allocation")
