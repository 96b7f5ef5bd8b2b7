"""The CLI: exit codes (0 ok, 2 bad input with a one-line message), JSON outputs."""
import json

from helpers import assert_bad_input, run


def test_info_json_resnet56():
    r = run("info", "resnet56", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["macs"] == 125_485_696
    assert abs(info["params"] - 0.85e6) / 0.85e6 < 0.01


def test_info_input_size_and_classes():
    r = run("info", "resnet20", "--num-classes", "100", "--input-size", "16", "--json")
    info = json.loads(r.stdout)
    r32 = json.loads(run("info", "resnet20", "--num-classes", "100", "--json").stdout)
    assert info["input_size"] == 16 and r32["input_size"] == 32
    assert info["params"] == r32["params"] and info["macs"] < r32["macs"]


def test_unknown_model_is_exit_2():
    assert_bad_input(run("info", "resnet21"), "resnet21", "resnet20")


def test_unknown_data_is_exit_2(tmp_path):
    assert_bad_input(run("train", "resnet20", "--data", "mnist", "--out", str(tmp_path / "o")),
                     "mnist", "digits")


def test_cifar_folder_without_batches_is_exit_2(tmp_path):
    assert_bad_input(run("train", "resnet20", "--data", "cifar10", "--root", str(tmp_path),
                         "--out", str(tmp_path / "o")), "data_batch_1")


def test_num_classes_mismatch_is_exit_2(tmp_path):
    assert_bad_input(run("train", "resnet20", "--num-classes", "7", "--out", str(tmp_path / "o")),
                     "7", "10")


def test_missing_and_corrupt_checkpoint_are_exit_2(tmp_path):
    assert_bad_input(run("eval", str(tmp_path / "nope")), "nope")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{broken")
    assert_bad_input(run("eval", str(ck)), "config")


def test_train_then_eval_and_classes_mismatch(tmp_path):
    out = tmp_path / "ck"
    r = run("train", "resnet20", "--epochs", "1", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = run("eval", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["data"] == "digits" and 0.0 <= res["top1"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "resnet20" and cfg["meta"]["data"]["name"] == "digits"
    # a checkpoint with 10 outputs evaluated on a 3-class image folder
    from PIL import Image
    for split in ("train", "val"):
        for c in "abc":
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 30, 10, 10)).save(d / f"{i}.png")
    assert_bad_input(run("eval", str(out), "--data", "imagefolder", "--root", str(tmp_path / "imgs")),
                     "num_classes=10", "3 classes")


def test_help_is_exit_0():
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout
