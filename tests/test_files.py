import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from prunewise import checkpoints, files, models, PrunewiseError


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
