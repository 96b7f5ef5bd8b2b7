"""Layer-wise repair of masked models: better reconstruction than no repair, pruned entries stay
zero, untouched layers stay untouched, any normalisation, clear errors, torchrun-exact."""
import copy
import json
import os
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from prunewise import PrunewiseError, baselines, dist, repair

from test_dist import free_port


def cnn(norm: str = "bn") -> nn.Module:
    torch.manual_seed(0)
    layer = {"bn": lambda c: nn.BatchNorm2d(c), "gn": lambda c: nn.GroupNorm(2, c),
             "none": lambda c: nn.Identity()}[norm]
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, groups=2), layer(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 5)).eval()


def calibration(n: int = 96, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=g)
    return [(x[i:i + 32], torch.zeros(len(x[i:i + 32]), dtype=torch.long))
            for i in range(0, n, 32)]


def masked(model, sparsity=0.7):
    plan = baselines.magnitude(model, sparsity=sparsity, keep=0.5, progress=False)
    return plan, plan.apply(model)


def output_error(a, b, batches) -> float:
    with torch.no_grad():
        return float(sum(((a(x) - b(x)) ** 2).sum() for x, _ in batches))


def layer_error(dense, pruned, name, batches) -> float:
    """|| pruned layer on its own input - dense layer on the dense input ||^2."""
    outs = {}
    for tag, model in (("d", dense), ("p", pruned)):
        got = []
        h = model.get_submodule(name).register_forward_hook(lambda m, i, o: got.append(o))
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        h.remove()
        outs[tag] = torch.cat(got)
    return float(((outs["d"] - outs["p"]) ** 2).sum())


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_repair_reconstructs_better_and_keeps_zeros(norm):
    dense = cnn(norm)
    batches = calibration()
    plan, pruned = masked(dense)
    before = {n.rsplit(".", 1)[0]: layer_error(dense, pruned, n.rsplit(".", 1)[0], batches)
              for n in plan.masks}
    out_before = output_error(dense, pruned, batches)
    fixed = repair.reconstruct(dense, copy.deepcopy(pruned), batches, masks=plan.masks,
                               progress=False)
    params = dict(fixed.named_parameters())
    for n, m in plan.masks.items():
        assert bool((params[n][~m] == 0).all())  # pruned weights stay exactly zero
        assert torch.isfinite(params[n]).all()
    first = next(iter(before))  # the first pruned layer sees the same input in both networks
    assert layer_error(dense, fixed, first, batches) < before[first]
    assert output_error(dense, fixed, batches) < out_before


def test_a_layer_that_keeps_everything_is_unchanged():
    dense = cnn()
    plan, pruned = masked(dense)
    name = next(iter(plan.masks))
    plan.masks[name] = torch.ones_like(plan.masks[name])
    pruned = plan.apply(dense)
    before = pruned.get_submodule(name.rsplit(".", 1)[0]).weight.clone()
    repair.reconstruct(dense, pruned, calibration(), masks=plan.masks, progress=False)
    assert torch.equal(pruned.get_submodule(name.rsplit(".", 1)[0]).weight, before)


def test_layernorm_mlp_and_conv1d():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32),
                        nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4)).eval()
    audio = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.ReLU(),
                          nn.Conv1d(8, 8, 3, padding="same", padding_mode="reflect"), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    for model, shape in ((mlp, (12,)), (audio, (2, 40))):
        batches = calibration(64, shape)
        plan, pruned = masked(model, 0.6)
        err = output_error(model, pruned, batches)
        repair.reconstruct(model, pruned, batches, masks=plan.masks, progress=False)
        assert output_error(model, pruned, batches) < err


def test_degenerate_calibration_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                          nn.ReLU(), nn.Linear(16, 3, bias=False)).eval()
    plan, pruned = masked(model, 0.5)
    zeros = [(torch.zeros(8, 6), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(PrunewiseError, match="all zero"):
        repair.reconstruct(model, copy.deepcopy(pruned), zeros, masks=plan.masks, progress=False)
    few = [(torch.randn(3, 6), torch.zeros(3, dtype=torch.long))]  # 3 samples, 16 inputs
    fixed = repair.reconstruct(model, copy.deepcopy(pruned), few, masks=plan.masks,
                               progress=False)
    assert all(torch.isfinite(p).all() for p in fixed.parameters())
    with pytest.raises(PrunewiseError, match="empty"):
        repair.reconstruct(model, copy.deepcopy(pruned), [], masks=plan.masks, progress=False)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()


def channels(dense):
    from prunewise import runs

    return runs.channel_plan(dense, torch.zeros(1, 3, 8, 8), "l1", runs.Structured(macs=0.5))


def test_channel_repair_keeps_shapes_and_improves_the_consumers():
    dense = small_cnn()
    for bn in (dense[1], dense[6]):  # statistics that are not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    batches = calibration()
    small, plan = channels(dense)
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    consumer = small[3]  # lost input channels; the dense rows it kept are all of them here
    assert consumer.weight.shape[1] < dense[3].weight.shape[1]

    def consumer_error(model):
        got = {}
        for tag, m in (("d", dense), ("p", model)):
            h = m[3].register_forward_hook(lambda mod, i, o, tag=tag: got.setdefault(tag, o))
            with torch.no_grad():
                m(batches[0][0])
            h.remove()
        return float(((got["d"][:, :got["p"].shape[1]] - got["p"]) ** 2).sum()) \
            if dense[3].weight.shape[0] == model[3].weight.shape[0] else None

    before, out_before = consumer_error(small), output_error(dense, small, batches)
    mean = small[6].running_mean.clone()
    fixed = repair.reconstruct(dense, copy.deepcopy(small), batches, plan=plan, progress=False)
    assert {k: v.shape for k, v in fixed.state_dict().items()} == shapes
    assert all(torch.isfinite(p).all() for p in fixed.parameters())
    if before is not None:
        assert consumer_error(fixed) < before
    assert output_error(dense, fixed, batches) < out_before
    # the last conv has no bias and feeds a BatchNorm: its intercept went into the running mean
    assert not torch.equal(fixed[6].running_mean, mean)
    with pytest.raises(PrunewiseError, match="exactly one"):
        repair.reconstruct(dense, copy.deepcopy(small), batches, progress=False)
    other, _ = channels(cnn())
    with pytest.raises(PrunewiseError):
        repair.reconstruct(dense, other, batches, plan=plan, progress=False)


def test_an_intercept_goes_into_the_batchnorm_after_a_conv_without_bias():
    dense = small_cnn()
    batches = calibration()
    plan = baselines.magnitude(dense, sparsity=0.6, keep=0.5, progress=False)
    pruned = plan.apply(dense)
    mean = pruned[6].running_mean.clone()
    err = layer_error(dense, pruned, "6", batches)  # the BatchNorm's output
    repair.reconstruct(dense, pruned, batches, masks=plan.masks, progress=False)
    assert layer_error(dense, pruned, "6", batches) < err
    assert "5.weight" in plan.masks and pruned[5].bias is None
    assert not torch.equal(pruned[6].running_mean, mean)
    # the running mean holds the fitted intercept: it moved by minus the fit's offset
    assert torch.isfinite(pruned[6].running_mean).all()


def _worker(rank, folder, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init(torch.device("cpu"))
    dense = cnn()
    plan, pruned = masked(dense)
    repair.reconstruct(dense, pruned, calibration(), masks=plan.masks, progress=False)
    dense = small_cnn()
    small, cut = channels(dense)
    repair.reconstruct(dense, small, calibration(), plan=cut, progress=False)
    if rank == 0:
        torch.save(pruned.state_dict(), os.path.join(folder, "two.pt"))
        torch.save(small.state_dict(), os.path.join(folder, "two-channels.pt"))
    dist.finish()


def test_two_ranks_give_the_one_process_weights(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    dense = cnn()
    plan, pruned = masked(dense)
    repair.reconstruct(dense, pruned, calibration(), masks=plan.masks, progress=False)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert all(torch.equal(two[k], v) for k, v in pruned.state_dict().items())
    dense = small_cnn()
    small, cut = channels(dense)
    repair.reconstruct(dense, small, calibration(), plan=cut, progress=False)
    two = torch.load(tmp_path / "two-channels.pt", weights_only=True)
    assert all(torch.equal(two[k], v) for k, v in small.state_dict().items())


def test_repair_is_a_pipeline_stage(digits, digits_checkpoint, tmp_path):
    """runs.Unstructured(repair=...) and prune fvw --repair: the report gains a repaired
    accuracy (and no recalibrated one: a repaired model is not recalibrated), the repair time is
    a stage, pruned weights stay zero; prune sliming --repair repairs the smaller model; a
    structured grid refuses --allocation."""
    from helpers import assert_bad_input, invoke
    from prunewise import checkpoints, models, runs
    from prunewise.plan import MaskPlan

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    settings = runs.Unstructured(sparsity=0.6, keep=0.5, samples=64,
                                 repair=runs.Repair(enabled=True, samples=64))
    pruned, plan, rep = runs.run_unstructured(model, digits, "magnitude", settings,
                                              measurement=runs.Measurement(latency=False))
    assert rep["accuracy"]["repaired"] is not None and rep["accuracy"]["recalibrated"] is None
    assert rep["stage_seconds"]["repair"] > 0 and rep["config"]["prune"]["repair"]["enabled"]
    params = dict(pruned.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in plan.masks.items())
    out = tmp_path / "cli"
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.6",
               "--keep", "0.5", "--repair", "--repair-samples", "64", "--latency-repeats", "0",
               "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "repaired" in r.stdout and "recalibrated" not in r.stdout
    saved = checkpoints.load_model(out / "model")
    kept = MaskPlan.load(out)
    assert all(bool((dict(saved.named_parameters())[n][~m] == 0).all())
               for n, m in kept.masks.items())
    assert "top-1 repaired" in (out / "report.md").read_text()
    assert_bad_input(invoke("bench", "--macs", "0.5", "--allocation", "lamp", "--out",
                            tmp_path / "b"), "--allocation")
    out = tmp_path / "channels"
    r = invoke("prune", "sliming", digits_checkpoint, "--method", "l1", "--macs", "0.5",
               "--repair", "--repair-samples", "64", "--latency-repeats", "0", "--quiet",
               "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["accuracy"]["repaired"] is not None and rep["accuracy"]["recalibrated"] is None
    assert rep["stage_seconds"]["repair"] > 0 and rep["macs"]["ratio"] < 0.6
    base = tmp_path / "base"  # a structured grid repairs too, and records that it did
    (base / "seed-0").parent.mkdir()
    shutil.copytree(digits_checkpoint, base / "seed-0")
    r = invoke("bench", "--methods", "l1", "--macs", "0.5", "--seeds", "0", "--base", base,
               "--finetune-epochs", "0", "--repair", "--repair-samples", "64",
               "--latency-repeats", "0", "--quiet", "--out", tmp_path / "grid")
    assert r.returncode == 0, r.stderr
    cell = json.loads((tmp_path / "grid" / "cells" / "l1-0.5-s0.json").read_text())
    assert cell["accuracy"]["repaired"] is not None
    assert json.loads((tmp_path / "grid" / "settings.json").read_text())["prune"]["repair"][
        "enabled"] is True


def test_the_walk_chains_a_resnets_stages_and_reads_the_same_inputs():
    """A ResNet's three stages are three Sequentials, one feeding the next: the walk caches
    its inputs through all nine blocks of resnet20 (not only the first stage, which made
    repair superlinear in depth), and every layer's input is bit for bit the whole pass's."""
    from prunewise import models, sequential

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(4, 1, 16, 16)
    data = [(x, torch.zeros(4, dtype=torch.long))]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    walk, whole = sequential.Walk(model, data, names), sequential.Walk(model, data, names,
                                                                        blocks=False)
    assert walk.blocks == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert whole.blocks == [] and walk.groups == whole.groups
    for group in walk.groups:   # one walk at a time: both hook the same model
        ours = list(walk.inputs(group))
        for a, b in zip(ours, list(whole.inputs(group))):
            assert all(torch.equal(a[n], b[n]) for n in group)
