"""Reliability, second round: files that are valid but lie, values at the edges of their range,
output paths that cannot be used, and what a killed save leaves behind."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_bad_input, invoke
from prunewise import PrunewiseError, checkpoints, files, fvw, masking, models, schema
from prunewise import data as D

TESTS = os.path.dirname(os.path.abspath(__file__))  # for helpers.py in subprocess scripts


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


def test_safetensors_get_the_umask_mode(tmp_path):
    files.write_tensors(tmp_path / "t.safetensors", {"a": torch.ones(2)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "t.safetensors").st_mode) == 0o666 & ~umask


def test_a_sparsity_that_keeps_nothing_is_refused():
    with pytest.raises(PrunewiseError, match="keeps no weight"):
        masking.schedule(1000, 0.9999999999999999, 0.5)
    assert masking.schedule(1000, 0.999, 0.5)[-1] == 1   # the last weight can stay


def test_more_class_groups_than_classes_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(12, 16), torch.arange(12) % 3)]
    with pytest.raises(PrunewiseError, match="class groups 1000 is more than the model's 3"):
        fvw.prune(model, batches, sparsity=0.5, keep=0.5, class_groups=1000)


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


def test_json_nested_too_deep_is_refused():
    with pytest.raises(PrunewiseError, match="nested more than"):
        schema.parse_json("[" * 600 + "]" * 600, "config.json")
    assert schema.parse_json("[" * 10 + "]" * 10, "x") == [[[[[[[[[[]]]]]]]]]]


def test_config_and_weights_from_different_saves_are_refused(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    folder = checkpoints.save_model(model, tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["widths"]["layer1.0.conv1"] = [8, 16, 3, 3]      # what a later, pruned save would say
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrunewiseError, match="different saves"):
        checkpoints.load_model(folder)


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


def test_a_resume_file_that_claims_another_iteration_is_refused(tmp_path):
    from prunewise import baselines
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    baselines.magnitude(model, sparsity=0.9, keep=0.5, checkpoint_dir=tmp_path)
    path = tmp_path / masking.RESUME_FILE
    with safe_open(str(path), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    rows = json.loads(meta["history"])
    for n in (99, 1):   # past the 4-iteration schedule; the finished masks called iteration 1
        history = json.dumps([{**rows[0], "iteration": i + 1} for i in range(n)])
        save_file(tensors, str(path), metadata={**meta, "iteration": str(n), "history": history})
        with pytest.raises(PrunewiseError, match="corrupt resume checkpoint"):
            baselines.magnitude(model, sparsity=0.9, keep=0.5, checkpoint_dir=tmp_path)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    r = invoke("demo", "--quick", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("path, value", [
    (("runs", "fvw", "layers"), [{"layer": 1}]), (("runs", "fvw", "layers"), [{}]),
    (("runs", "fvw", "history"), [{"iteration": "x", "sparsity": 0.5}]),
    (("runs", "sliming", "spectra"), {"a": ["x"]}), (("runs", "fvw", "budget"), "x"),
    (("command",), 5), (("command",), "\ud800")])
def test_a_report_whose_fields_lie_is_one_line(tmp_path, demo_report, path, value):
    import copy

    rep = copy.deepcopy(demo_report)
    obj = rep
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    (tmp_path / "report.json").write_text(json.dumps(rep))
    before = (tmp_path / "report.json").read_bytes()
    r = invoke("report", tmp_path)
    assert_bad_input(r, "report")
    assert (tmp_path / "report.json").read_bytes() == before


def test_evaluation_batches_shrink_with_the_input_size():
    from prunewise import train

    torch.manual_seed(0)
    bundle = D.load("digits", image_size=160, limit=200)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    assert train.EVAL_VALUES // (160 * 160) < 256          # this size gets smaller batches
    got = train.evaluate_split(model, bundle, "test")
    ref = train.evaluate(model, D.batches(bundle.test, bundle, 7))
    assert got["n"] == ref["n"] and got["top1"] == ref["top1"]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


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


def test_files_from_two_saves_are_refused_by_their_digest(tmp_path):
    from prunewise.plan import MaskPlan

    torch.manual_seed(0)
    a, b = models.create("resnet20", num_classes=10, in_channels=1), \
        models.create("resnet20", num_classes=10, in_channels=1)
    checkpoints.save_model(a, tmp_path / "a")
    checkpoints.save_model(b, tmp_path / "b")
    # a save killed after the weights: b's weights (same shapes) next to a's config
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors")
                                                       .read_bytes())
    with pytest.raises(PrunewiseError, match="model.safetensors is not the file .*config.json was "
                                             "written with"):
        checkpoints.load_model(tmp_path / "a")
    assert torch.equal(checkpoints.load_model(tmp_path / "b").fc.weight, b.fc.weight)
    masks = {"fc.weight": torch.rand(10, 64) > 0.5}
    MaskPlan(masks).save(tmp_path / "p")
    MaskPlan({"fc.weight": ~masks["fc.weight"]}).save(tmp_path / "q")
    (tmp_path / "p" / "masks.safetensors").write_bytes((tmp_path / "q" / "masks.safetensors")
                                                       .read_bytes())
    with pytest.raises(PrunewiseError, match="masks.safetensors is not the file"):
        MaskPlan.load(tmp_path / "p")


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


def test_weights_and_data_holding_nan_are_refused(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
        model.conv1.weight[0, 0, 0, 0] = float("inf")
    checkpoints.save_model(model, tmp_path / "ck")
    with pytest.raises(PrunewiseError, match="tensor '.*' holds 1 NaN or infinite value"):
        checkpoints.load_model(tmp_path / "ck")
    x = torch.rand(8, 1, 4, 4)
    x[3, 0, 1, 1] = float("nan")
    y = torch.arange(8) % 2
    with pytest.raises(PrunewiseError, match="NaN or infinite"):
        D.from_tensors((x, y), (x.nan_to_num(), y))
    assert len(D.from_tensors((x.nan_to_num(), y), (x.nan_to_num(), y)).test) == 8


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_small_crafted_inputs_stay_under_1gb(tmp_path, digits_checkpoint):
    """Per reader, a file of a few kB that declares a huge size, and the largest documented
    option values: each command runs in a process whose address space may grow by only 1 GiB,
    and ends with exit 0 or one line (a refusal, or 'out of memory'), never a traceback."""
    import gzip
    import shutil
    import subprocess
    import sys
    import textwrap

    from PIL import Image

    ck = tmp_path / "ck"                           # meta.data.image_size = 1024 in 1.4 kB
    shutil.copytree(digits_checkpoint, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["meta"]["data"]["image_size"] = 1024
    (ck / "config.json").write_text(json.dumps(cfg))
    idx = tmp_path / "mnist"                       # 4,900,000 images declared in 4 kB
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (4_900_000).to_bytes(4, "big") + (28).to_bytes(4, "big")
                 * 2 + bytes(4000))
    with gzip.open(idx / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + (4_900_000).to_bytes(4, "big") + bytes(100))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / stem).write_bytes(bytes(16))
    for split in ("train", "val"):                 # 13000 x 13000 pixels in 20 kB
        (tmp_path / "img" / split / "a").mkdir(parents=True)
        Image.new("1", (13000, 13000)).save(tmp_path / "img" / split / "a" / "big.png")
    head = json.dumps({"train.x": {"dtype": "F32", "shape": [10**6, 1, 1024, 1024],
                                   "data_offsets": [0, 4 * 2**40]}}).encode()
    (tmp_path / "t.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + bytes(64))
    runs = [["eval", ck], ["eval", digits_checkpoint, "--data", "mnist", "--root", idx],
            ["eval", digits_checkpoint, "--data", "imagefolder", "--root", tmp_path / "img"],
            ["eval", digits_checkpoint, "--data", "tensors", "--root", tmp_path / "t.safetensors"],
            ["info", "resnet20", "--in-channels", "4096", "--input-size", "1024"],
            ["info", "vit_tiny", "--input-size", "1024"],
            ["export", digits_checkpoint, "--input-size", "1024", "--onnx", tmp_path / "m.onnx"],
            ["train", "resnet20", "--image-size", "700", "--epochs", "1", "--quiet",
             "--out", tmp_path / "t"]]
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        from prunewise.cli import main
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import limit_address_space
        limit_address_space()
        for argv in {[[str(a) for a in r] for r in runs]!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            lines = err.getvalue().strip().splitlines()
            print(code, len(lines), lines[-1] if lines else "", flush=True)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=env)
    rows = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(rows) == len(runs), done.stderr[-2000:]
    for argv, row in zip(runs, rows):
        code, lines, last = row.split(" ", 2)
        assert code == "0" or (code == "2" and lines == "1" and "Traceback" not in last), \
            (argv, row)
    refused = [row.split(" ", 2)[2] for row in rows[:5]]
    for row, words in zip(refused, ["at most 772", "at most 60000 items", "13000x13000",
                                    "t.safetensors", "at most 32"]):
        assert words in row, (words, row)
