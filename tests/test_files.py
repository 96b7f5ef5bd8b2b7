import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from prunewise import checkpoints, files, models, PrunewiseError
import stat
from prunewise import schema
from prunewise import data as D
TESTS = os.path.dirname(os.path.abspath(__file__))  # for helpers.py in subprocess scripts


def test_save_load_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    checkpoints.save_model(model, tmp_path / "ck", meta={"note": "x"})
    loaded = checkpoints.load_model(tmp_path / "ck").eval()
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))
    assert loaded.prunewise_meta == {"note": "x"}
    assert not list(tmp_path.glob("ck/.*prunewise-tmp*")) and not list(tmp_path.glob("ck/*.tmp"))


def test_load_narrower_widths(tmp_path):
    """A checkpoint whose layers are narrower than the zoo's (a pruned model) reloads."""
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    block = model.layer1[0]
    keep = torch.arange(8)
    with torch.no_grad():
        conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
        new1 = torch.nn.Conv2d(conv1.in_channels, 8, 3, padding=1, bias=False)
        new1.weight.copy_(conv1.weight[keep])
        newbn = torch.nn.BatchNorm2d(8)
        newbn.weight.copy_(bn1.weight[keep])
        new2 = torch.nn.Conv2d(8, conv2.out_channels, 3, padding=1, bias=False)
        new2.weight.copy_(conv2.weight[:, keep])
    block.conv1, block.bn1, block.conv2 = new1, newbn, new2
    model.eval()
    checkpoints.save_model(model, tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["widths"]["layer1.0.conv1"][0] == 8
    loaded = checkpoints.load_model(tmp_path / "p").eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("damage", ["missing", "bad_json", "bad_weights", "wrong_arch", "no_weights"])
def test_bad_checkpoints_are_clear_errors(tmp_path, damage):
    model = models.create("resnet20", num_classes=10, in_channels=1)
    ck = tmp_path / "ck"
    checkpoints.save_model(model, ck)
    if damage == "missing":
        ck = tmp_path / "nope"
    elif damage == "bad_json":
        (ck / "config.json").write_text("{not json")
    elif damage == "bad_weights":
        (ck / "model.safetensors").write_bytes(b"garbage" * 10)
    elif damage == "no_weights":
        (ck / "model.safetensors").unlink()
    elif damage == "wrong_arch":
        cfg = json.loads((ck / "config.json").read_text())
        cfg["arch"] = "vgg16_bn"
        (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrunewiseError) as e:
        checkpoints.load_model(ck)
    assert str(ck) in str(e.value) or "nope" in str(e.value)
    assert "\n" not in str(e.value)


def test_atomic_json_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "r.json"
    files.write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        files.write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    p = tmp_path / "sub" / "out.txt"
    files.atomic_write(p, lambda tmp: Path(tmp).write_text("first"))
    assert p.read_text() == "first"  # the parent folder was created

    def half_then_fail(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(p, half_then_fail)
    assert p.read_text() == "first"
    assert [f.name for f in p.parent.iterdir()] == ["out.txt"]  # no temp file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask


def test_jsonable_handles_tensors_arrays_and_paths():
    obj = {"t": torch.tensor([1, 2]), "s": torch.tensor(0.5), "n": np.float32(2.0),
           "p": Path("a/b")}
    assert json.loads(json.dumps(obj, default=files.jsonable)) == {
        "t": [1, 2], "s": 0.5, "n": 2.0, "p": "a/b"}
    with pytest.raises(TypeError, match="object"):
        json.dumps({"x": object()}, default=files.jsonable)


def test_tensors_round_trip_and_corrupt_file(tmp_path):
    t = {"a": torch.arange(6).view(2, 3), "b": torch.ones(2, dtype=torch.bool)}
    files.write_tensors(tmp_path / "t.safetensors", t, metadata={"k": 1})
    back = files.read_tensors(tmp_path / "t.safetensors")
    assert set(back) == {"a", "b"} and all(torch.equal(back[k], t[k]) for k in t)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(PrunewiseError, match="corrupt"):
        files.read_tensors(tmp_path / "bad.safetensors")


def test_safetensors_get_the_umask_mode(tmp_path):
    files.write_tensors(tmp_path / "t.safetensors", {"a": torch.ones(2)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "t.safetensors").st_mode) == 0o666 & ~umask


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


def test_every_json_written_is_strict_json(tmp_path):
    """NaN and infinities (a diverged score, a chance-level loss) are written as null: Python's
    NaN / Infinity tokens are not JSON and other parsers refuse them."""
    import json as std
    import math

    obj = {"loss": float("nan"), "ppl": [1.0, float("inf")], "t": torch.tensor(float("-inf")),
           "ok": 0.5}
    files.write_json(tmp_path / "r.json", obj)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = std.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert got == {"loss": None, "ppl": [1.0, None], "t": None, "ok": 0.5}
    assert math.isnan(obj["loss"])   # the caller's object is left alone
