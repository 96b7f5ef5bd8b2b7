"""Device resolution, --device / --amp on the command line, and (with CUDA only) GPU runs."""
import pytest
import torch

from prunewise import data as D
from prunewise import device, dist, fvw, models, runs, train
from prunewise.cli import main
from prunewise.errors import PrunewiseError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.resolve("auto") == torch.device("cpu")
    assert device.resolve(None) == torch.device("cpu")
    assert device.resolve(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(spec):
    with pytest.raises(PrunewiseError, match="not available.*--device cpu"):
        device.resolve(spec)


@pytest.mark.skipif(device.mps_available(), reason="checks the error without MPS")
def test_mps_without_mps_is_a_clear_error():
    with pytest.raises(PrunewiseError, match="'mps' is not available"):
        device.resolve("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "", "cpu:0", 3])
def test_bad_device_strings(spec):
    with pytest.raises(PrunewiseError, match="device must be one of"):
        device.resolve(spec)


def test_amp_is_an_error_off_cuda():
    device.check_amp(None, torch.device("cpu"))
    with pytest.raises(PrunewiseError, match="needs a CUDA device"):
        device.check_amp("bf16", torch.device("cpu"))
    with pytest.raises(PrunewiseError, match="amp must be one of"):
        device.check_amp("fp8", torch.device("cuda"))
    with pytest.raises(PrunewiseError, match="needs a CUDA device"):
        runs.Compute(device="cpu", amp="fp16").place(torch.nn.Linear(2, 2))


def test_single_process_helpers_are_no_ops():
    assert not dist.active() and dist.rank() == 0 and dist.world() == 1 and dist.is_main()
    t = torch.arange(3.0)
    assert dist.all_reduce_sum(t) is t
    assert dist.shard(5) == slice(0, 5, 1) and dist.part() is None
    dist.barrier()
    ran = []
    dist.main_writes(lambda: ran.append(1))
    assert ran == [1]


def test_batches_shards_are_disjoint_and_complete(digits):
    whole = list(D.batches(digits.train, digits, 10, shuffle=True, augment=digits.augment,
                           seed=3, limit=35))
    parts = [list(D.batches(digits.train, digits, 10, shuffle=True, augment=digits.augment,
                            seed=3, limit=35, shard=(r, 2))) for r in range(2)]
    for i, (x, y) in enumerate(whole):
        assert torch.equal(x[0::2], parts[0][i][0]) and torch.equal(y[1::2], parts[1][i][1])
    with pytest.raises(PrunewiseError, match="shard"):
        D.batches(digits.train, digits, 10, shard=(2, 2))


def test_compute_place_keeps_the_callers_model():
    model = torch.nn.Linear(2, 2)
    assert runs.Compute().place(model) is model
    assert runs.Compute(device="cpu").place(model) is model
    assert runs.Compute().record(model) == {"device": "cpu", "amp": None, "world": 1}


@pytest.mark.parametrize("args, message", [
    (["eval", "x", "--device", "tpu"], "device must be one of"),
    (["train", "resnet20", "--epochs", "1", "--amp", "bf16", "--device", "cpu", "--out", "o"],
     "needs a CUDA device"),
])
def test_cli_device_errors_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cli_cuda_without_cuda_exit_2(digits_checkpoint, capsys):
    assert main(["eval", str(digits_checkpoint), "--device", "cuda"]) == 2
    assert "not available" in capsys.readouterr().err


def test_cli_eval_on_cpu(digits_checkpoint, capsys):
    assert main(["eval", str(digits_checkpoint), "--device", "cpu", "--json"]) == 0
    assert '"top1"' in capsys.readouterr().out


# ---- CUDA only ------------------------------------------------------------------------------

@cuda
def test_cuda_fit_masks_stay_zero_and_amp_trains(digits):
    dev = device.resolve("cuda")
    for amp in (None, "bf16", "fp16"):
        torch.manual_seed(0)
        model = models.create("resnet20", num_classes=10, in_channels=1).to(dev)
        masks = {"fc.weight": torch.rand(model.fc.weight.shape, device=dev) > 0.5}
        h = train.fit(model, digits, epochs=1, batch_size=64, masks=masks, progress=False,
                      amp=amp)
        assert h["history"][0]["train_loss"] == h["history"][0]["train_loss"]  # not NaN
        assert bool((model.fc.weight[~masks["fc.weight"]] == 0).all())
        assert device.of(model) == dev


@cuda
def test_cuda_fvw_matches_cpu_masks_closely(digits, trained_resnet20):
    batches = lambda: D.batches(digits.train, digits, 64, shuffle=True, seed=0, limit=128)
    cpu = fvw.prune(trained_resnet20, batches, sparsity=0.5, keep=0.7, samples=128)
    gpu_model = models.create("resnet20", num_classes=10, in_channels=1)
    gpu_model.load_state_dict(trained_resnet20.state_dict())
    gpu = fvw.prune(gpu_model.to("cuda"), batches, sparsity=0.5, keep=0.7, samples=128)
    agree = sum(int((cpu.masks[k] == gpu.masks[k].cpu()).sum()) for k in cpu.masks)
    assert agree / cpu.total > 0.99  # float32 on another device: a few boundary elements differ
    assert gpu.sparsity == cpu.sparsity


@cuda
def test_cuda_structured_run_and_latency(digits, trained_resnet20):
    pruned, plan, rep = runs.run_structured(
        trained_resnet20, digits, "sliming", runs.Structured(macs=0.5),
        measurement=runs.Measurement(repeats=2, warmup=1), compute=runs.Compute(device="cuda"))
    assert device.of(pruned).type == "cuda" and rep["compute"]["device"].startswith("cuda")
    assert rep["macs"]["ratio"] <= 0.5
