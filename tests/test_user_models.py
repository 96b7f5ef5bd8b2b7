"""Models a user brings (tests/user_models.py): structured pruning that hands back a working,
smaller model (whole heads, valid GroupNorm groups, LSTMs, nn.MultiheadAttention), the mask
scope over attention / recurrent / embedding weights, MACs that count attention and recurrent
layers, checkpoints rebuilt by the user's factory, and the command line with --model."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunewise import (PrunewiseError, checkpoints, interop, masking, measure, runs, surgery,
                       utils)
from prunewise import data as D

sys.path.insert(0, str(Path(__file__).parent))
import user_models as U  # noqa: E402

HAS_HF = True
try:
    import transformers  # noqa: F401
except ImportError:
    HAS_HF = False

NAMES = [n for n in U.FACTORIES if HAS_HF or n not in U.HF]
BUDGETS = {"lstm_text": 0.8}   # its LSTM is the only prunable group: 0.55 of the MACs at least


def _hf(name):
    return pytest.mark.skipif(name in U.HF and not HAS_HF, reason="transformers not installed")


def out(model, x):
    with torch.no_grad():
        return utils.forward(model.eval(), x)


@pytest.mark.parametrize("method", ["sliming", "l1"])
@pytest.mark.parametrize("name", NAMES)
def test_structured_gives_a_smaller_model_that_runs(name, method):
    model, x = U.build(name), U.INPUTS[name](2)
    budget = BUDGETS.get(name, 0.6)
    new, plan = runs.channel_plan(model, x, method, runs.Structured(macs=budget))
    assert out(new, x).shape == out(model, x).shape
    real, dense = measure.macs(new, x), measure.macs(model, x)
    assert plan.meta["original_macs"] == dense          # the cost model counts what measure does
    assert plan.meta["predicted_macs"] == pytest.approx(real, rel=1e-9)
    assert plan.meta["predicted_params"] == measure.params(new)
    assert real <= budget * dense and real >= (budget - 0.1) * dense
    assert measure.params(new) < measure.params(model)


@pytest.mark.parametrize("name", [n for n in ("qkv_vit", "hf_bert", "hf_vit") if n in NAMES])
def test_attention_loses_whole_heads_and_knows_it(name):
    model, x = U.build(name), U.INPUTS[name](2)
    heads = {k: v for k, v in __import__("prunewise").layers.attention_heads(model).items()}
    assert heads, "the attention modules are found"
    new, plan = runs.channel_plan(model, x, "l1", runs.Structured(macs=0.5))
    mods = dict(new.named_modules())
    fewer = 0
    for mod, info in heads.items():
        q = mods[info["qkv"][0]]
        assert q.out_features % info["head_dim"] == 0
        now = getattr(mods[mod], info["attr"])
        assert now == q.out_features // info["head_dim"]    # the module's head count follows
        fewer += now < info["heads"]
    assert fewer, "some heads were removed"


def test_groupnorm_groups_stay_whole_and_equal():
    model, x = U.build("odd_cnn"), U.INPUTS["odd_cnn"](2)
    for method in ("sliming", "l1", "random"):
        new, plan = runs.channel_plan(model, x, method, runs.Structured(macs=0.5))
        for gn in (m for m in new.modules() if isinstance(m, nn.GroupNorm)):
            assert gn.num_channels % gn.num_groups == 0
        work = copy.deepcopy(model)
        infos = {g.name: g for g in surgery.groups(surgery.build_graph(work, x), work)}
        for name, kept in plan.keep.items():
            info = infos[name]
            if info.parts > 1:
                per = torch.bincount(kept // (info.size // info.parts), minlength=info.parts)
                assert bool((per == per[0]).all()), (name, per)


def test_a_plan_that_splits_a_head_is_refused():
    model, x = U.build("qkv_vit"), U.INPUTS["qkv_vit"](2)
    new, plan = runs.channel_plan(model, x, "l1", runs.Structured(macs=0.5))
    name = next(k for k in plan.keep if k.endswith("attn.v"))
    plan.keep[name] = torch.arange(3)   # part of the first head
    with pytest.raises(PrunewiseError, match="part of an attention head"):
        surgery.apply(model, plan, x)


class HardCoded(nn.Module):
    """A forward that hard-codes a width: no surgery can keep it running."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.fc(y.reshape(y.shape[0], 16, -1).mean(-1))


def test_a_model_that_would_not_run_is_never_handed_back():
    model, x = HardCoded().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(PrunewiseError, match=r"channel group 'b'.*does not run.*--exclude b"):
        runs.channel_plan(model, x, "l1", runs.Structured(macs=0.5))
    # leaving the named layer dense is the advice, and it works
    new, plan = runs.channel_plan(model, x, "l1", runs.Structured(macs=0.8, exclude=("b",)))
    assert out(new, x).shape == (2, 2) and list(plan.keep) == ["a"]


@pytest.mark.parametrize("name", NAMES)
def test_torch_pruning_side_by_side(name):
    """Torch-Pruning called directly (MetaPruner + magnitude importance) and prunewise both hand
    back working smaller models on every network; prunewise meets its MACs budget."""
    import torch_pruning as tp

    model, x = U.build(name), U.INPUTS[name](2)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    heads = {model.get_submodule(q): info["heads"]
             for info in __import__("prunewise").layers.attention_heads(model).values()
             for q in info["qkv"]}
    theirs = copy.deepcopy(model)
    ignored = [m for m in theirs.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        theirs, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.3,
        ignored_layers=ignored, num_heads={theirs.get_submodule(n): h for n, h in
                                           ((k, v) for k, v in
                                            ((nm, heads[model.get_submodule(nm)])
                                             for nm, _ in model.named_modules()
                                             if model.get_submodule(nm) in heads))},
        prune_num_heads=bool(heads), prune_head_dims=not heads, round_to=None)
    try:
        pruner.step()
        tp_ok = out(theirs, x).shape == out(model, x).shape
    except Exception:  # noqa: BLE001 - recorded, not required: prunewise must work regardless
        tp_ok = False
    ours, plan = runs.channel_plan(model, x, "l1", runs.Structured(macs=BUDGETS.get(name, 0.6)))
    assert out(ours, x).shape == out(model, x).shape
    assert measure.macs(ours, x) <= BUDGETS.get(name, 0.6) * measure.macs(model, x)
    assert isinstance(tp_ok, bool) and classifier is not None


@pytest.mark.parametrize("name", NAMES)
def test_mask_scope_covers_attention_and_recurrent_weights(name):
    model = U.build(name)
    names = masking.prunable(model)
    params = dict(model.named_parameters())
    for n, m in model.named_modules():
        for leaf in masking.weight_matrices(m):
            full = f"{n}.{leaf}" if n else leaf
            if isinstance(m, nn.Embedding):
                assert full not in names                 # embeddings: dense by default
            elif isinstance(m, (nn.MultiheadAttention, nn.LSTM)):
                assert full in names
    # the input stem is the first layer only when it is a conv / linear layer
    first = next(n for n, m in model.named_modules() if masking.weight_matrices(m))
    first_mod = model.get_submodule(first)
    if isinstance(first_mod, nn.Embedding):
        linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        assert all(l in names for l in linears)          # no inner layer taken for the stem
    left = {r["layer"]: r["reason"] for r in masking.left_out(model, names)}
    assert set(left) == {n for n, p in params.items() if p.dim() >= 2} - set(names)
    assert all(left.values())
    with_emb = masking.prunable(model, masking.Scope(embeddings=True))
    assert all(f"{n}.weight" in with_emb for n, m in model.named_modules()
               if isinstance(m, nn.Embedding))


@pytest.mark.parametrize("name", NAMES)
def test_masks_reach_their_sparsity_and_match_torch_prune(name):
    from prunewise import baselines

    model, x = U.build(name), U.INPUTS[name](4)
    plan = baselines.magnitude(model, sparsity=0.9, keep=0.5)
    assert plan.sparsity == pytest.approx(0.9, abs=1e-3)
    a = plan.apply(model)
    b = interop.to_torch_prune(model, plan)
    torch.testing.assert_close(out(a, x), out(b, x), rtol=1e-5, atol=1e-6)
    assert runs.nonzero_macs(a, x) < measure.macs(model, x)


def test_macs_count_attention_and_recurrent_layers():
    x = U.INPUTS["qkv_vit"](1)
    assert measure.macs(U.build("mha_vit"), x) == measure.macs(U.build("qkv_vit"), x)
    lstm, ids = U.build("lstm_text"), U.INPUTS["lstm_text"](1)
    L = ids.shape[1]
    expected = L * 4 * 48 * (32 + 48) + 48 * U.CLASSES
    assert measure.macs(lstm, ids) == expected
    enc = U.build("encoder_text")
    rows = {r["name"]: r for r in measure.layer_table(enc, ids)}
    E = 32
    assert rows["encoder.layers.0.self_attn"]["macs"] == 4 * L * E * E + 2 * L * L * E


@pytest.mark.parametrize("name", ["qkv_vit", "lstm_text"] + (["hf_bert"] if HAS_HF else []))
def test_checkpoints_of_user_models_rebuild_through_their_plans(name, tmp_path):
    model, x = U.build(name), U.INPUTS[name](2)
    once, _ = runs.channel_plan(model, x, "sliming", runs.Structured(macs=0.9))
    twice, _ = runs.channel_plan(once, x, "l1", runs.Structured(macs=0.9))
    checkpoints.save_model(twice, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["kind"] == "user" and cfg["structure"] == 2
    with pytest.raises(PrunewiseError, match="build=FACTORY"):
        checkpoints.load_model(tmp_path / "ck")       # a checkpoint never names code to run
    back = checkpoints.load_model(tmp_path / "ck", build=U.FACTORIES[name])
    torch.testing.assert_close(out(back, x), out(twice, x))


def test_a_dense_user_model_saves_and_loads(tmp_path):
    model = U.build("audio")
    checkpoints.save_model(model, tmp_path / "ck")
    back = checkpoints.load_model(tmp_path / "ck", build=U.AudioNet)
    x = U.INPUTS["audio"](2)
    torch.testing.assert_close(out(back, x), out(model, x))
    with pytest.raises(PrunewiseError, match="does not match"):
        checkpoints.load_model(tmp_path / "ck", build=U.OddCNN)


@pytest.mark.skipif(not HAS_HF, reason="transformers not installed")
def test_fvw_on_a_huggingface_model_reads_its_logits():
    from prunewise import fvw

    model, ids = U.build("hf_bert"), U.INPUTS["hf_bert"](16)
    y = torch.arange(16) % U.CLASSES
    plan = fvw.prune(model, [(ids, y)], sparsity=0.5, keep=0.8)
    assert plan.sparsity == pytest.approx(0.5, abs=1e-3)


def text_bundle(n=240):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (n, 12), generator=g)
    y = x[:, 0] % U.CLASSES
    return x, y


def test_text_data_through_the_pipeline():
    x, y = text_bundle()
    bundle = D.from_tensors((x[:180], y[:180]), (x[180:], y[180:]), name="toy-text")
    assert bundle.raw and bundle.example(2).dtype == torch.int64
    model = U.build("encoder_text")
    _, plan, rep = runs.run_unstructured(
        model, bundle, "magnitude", runs.Unstructured(sparsity=0.5, keep=0.7),
        finetune=runs.FineTune(epochs=1), measurement=runs.Measurement(latency=False))
    assert rep["accuracy"]["finetuned"] is not None
    assert [r["layer"] for r in rep["left_out"]] == ["embed.weight"]
    small, cplan, rep = runs.run_structured(
        model, bundle, "sliming", runs.Structured(macs=0.7, repair=runs.Repair(enabled=True,
                                                                                 samples=32)),
        measurement=runs.Measurement(latency=False))
    assert rep["accuracy"]["repaired"] is not None and rep["macs"]["ratio"] <= 0.7


def test_data_from_batches_and_dict_inputs():
    x, y = text_bundle(200)
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 150, 50)]
    bundle = D.from_batches(batches, [(x[150:], y[150:])])
    assert len(bundle.train) + len(bundle.val) == 150
    both = D.from_tensors(({"input_ids": x[:150], "mask": torch.ones(150, 12)}, y[:150]),
                          ({"input_ids": x[150:], "mask": torch.ones(50, 12)}, y[150:]))
    xb, yb = next(iter(D.batches(both.train, both, 16)))
    assert set(xb) == {"input_ids", "mask"} and len(yb) == 16
    with pytest.raises(PrunewiseError, match="one kind and shape"):
        D.from_tensors((x, y.float()), (x, y))   # float targets in one split, labels in another
    assert D.from_tensors((x, y.float()), (x, y.float())).num_classes == 0   # a regression


def test_tensors_file_reader(tmp_path):
    from safetensors.torch import save_file

    x, y = text_bundle()
    path = tmp_path / "text.safetensors"
    save_file({"train.x": x[:180], "train.y": y[:180], "test.x": x[180:], "test.y": y[180:]},
              str(path))
    bundle = D.load("tensors", path)
    assert bundle.num_classes == U.CLASSES and len(bundle.test) == 60
    save_file({"train.x": x, "test.x": x.clone(), "test.y": y}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(PrunewiseError, match="train.y"):
        D.load("tensors", tmp_path / "bad.safetensors")
    with pytest.raises(PrunewiseError, match="needs --root"):
        D.load("tensors", None)


def write_text_data(path: Path) -> Path:
    from safetensors.torch import save_file

    x, y = text_bundle()
    save_file({"train.x": x[:180], "train.y": y[:180], "test.x": x[180:], "test.y": y[180:]},
              str(path))
    return path


def cli(args):
    from helpers import invoke

    r = invoke(*args)
    r.exit_code, r.output = r.returncode, r.stdout + r.stderr
    return r


def test_cli_with_a_user_model(tmp_path):
    """The command line on a model of the user's own: a state dict in, a pruned checkpoint out
    that eval, info, export and a second prune read with the same --model."""
    from safetensors.torch import save_file

    data = write_text_data(tmp_path / "text.safetensors")
    weights = tmp_path / "dense.safetensors"
    save_file(U.build("lstm_text").state_dict(), str(weights))
    factory = f"{Path(U.__file__)}:LSTMText"
    common = ["--model", factory, "--data", "tensors", "--root", str(data)]
    r = cli(["prune", "sliming", str(weights), *common, "--macs", "0.8", "--out",
             str(tmp_path / "s"), "--quiet", "--latency-repeats", "0"])
    assert r.exit_code == 0, r.output
    r = cli(["eval", str(tmp_path / "s" / "model"), *common, "--json"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["top1"] <= 1
    r = cli(["info", str(tmp_path / "s" / "model"), "--model", factory, "--json"])
    assert r.exit_code == 0, r.output
    assert any(row["type"] == "LSTM" for row in json.loads(r.stdout)["layers"])
    r = cli(["prune", "fvw", str(tmp_path / "s" / "model"), *common, "--method", "magnitude",
             "--sparsity", "0.5", "--keep", "0.6", "--out", str(tmp_path / "m"), "--quiet",
             "--latency-repeats", "0"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert rep["left_out"] == [{"layer": "embed.weight",
                                "reason": "embedding (embeddings=True / --embeddings prunes it)"}]
    # without --model, a user checkpoint is refused with what to do
    r = cli(["eval", str(tmp_path / "s" / "model"), "--data", "tensors", "--root", str(data)])
    assert r.exit_code == 2 and "--model FILE.py:FACTORY" in r.output


def test_cli_model_spec_errors(tmp_path):
    data = write_text_data(tmp_path / "text.safetensors")
    for spec, words in ((f"{tmp_path}/none.py:f", "file not found"), ("nocolon", "FILE.py"),
                        (f"{Path(U.__file__)}:Nope", "no function 'Nope'")):
        r = cli(["eval", str(tmp_path), "--model", spec, "--data", "tensors", "--root",
                 str(data)])
        assert r.exit_code == 2 and words in r.output, r.output


def test_cli_trains_a_user_model_then_prunes_it(tmp_path):
    data = write_text_data(tmp_path / "text.safetensors")
    factory = f"{Path(U.__file__)}:EncoderText"
    common = ["--model", factory, "--data", "tensors", "--root", str(data)]
    r = cli(["train", *common, "--epochs", "1", "--batch-size", "32", "--out",
             str(tmp_path / "base"), "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    assert cfg["kind"] == "user" and cfg["inputs"] == {"": {"shape": [12], "dtype": "int64"}}
    r = cli(["prune", "sliming", str(tmp_path / "base"), *common, "--macs", "0.7", "--repair",
             "--repair-samples", "32", "--out", str(tmp_path / "s"), "--quiet",
             "--latency-repeats", "0"])
    assert r.exit_code == 0, r.output
    r = cli(["export", str(tmp_path / "s"), "--model", factory, "--onnx",
             str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").stat().st_size > 0
    r = cli(["train", "resnet20", *common, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "one of them" in r.output


def test_mha_output_projection_is_read_not_called():
    """nn.MultiheadAttention reads its out_proj weight without calling it: repair leaves it as
    masked and the post-training scorers weigh it by magnitude (no hook ever sees its input)."""
    from prunewise import posttrain, repair

    model, x = U.build("encoder_text"), U.INPUTS["encoder_text"](16)
    y = torch.arange(16) % U.CLASSES
    plan = posttrain.wanda(model, [(x, y)], sparsity=0.5, keep=0.5)
    name = "encoder.layers.0.self_attn.out_proj.weight"
    assert 0.3 < 1 - float(plan.masks[name].float().mean()) < 0.7
    masked = plan.apply(model)
    repair.reconstruct(model, masked, [(x, y)], masks=plan.masks, progress=False)
    params = dict(masked.named_parameters())
    assert not bool(params[name][~plan.masks[name]].any())


# --------------------------------------------------------------------------- models a user has
def _tied_cnn():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3.weight = self.c2.weight   # one tensor, two layers
            self.c4 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            for c in (self.c1, self.c2, self.c3, self.c4):
                x = torch.relu(c(x))
            return self.fc(x.mean((2, 3)))
    torch.manual_seed(0)
    return Tied().eval()


def test_tied_weights_are_pruned_once_and_stay_tied():
    """Masks: the shared tensor is one parameter with one mask. Channels: every group that
    touches the shared tensor keeps its channels (the report's groups say why), the others are
    cut, and the pruned model still shares the tensor."""
    model = _tied_cnn()
    x = torch.randn(2, 1, 8, 8)
    from prunewise import baselines

    plan = baselines.magnitude(model, sparsity=0.5, progress=False)
    assert "c2.weight" in plan.masks and "c3.weight" not in plan.masks
    pruned = plan.apply(model)
    assert pruned.c3.weight is pruned.c2.weight
    small, cplan = runs.channel_plan(model, x, "l1", runs.Structured(macs=0.7))
    assert small.c3.weight is small.c2.weight
    assert small.c2.weight.shape == model.c2.weight.shape
    assert set(cplan.keep) == {"c4"} and cplan.counts["c4"] < 16
    skipped = cplan.meta["groups"]["skipped"]
    assert {"c1", "c2", "c3"} <= set(skipped) and "tied" in skipped["c2"]
    # the report says so: the groups that kept their channels, and why
    from prunewise import data as D

    x8 = torch.randn(40, 1, 8, 8)
    bundle = D.from_tensors((x8, torch.arange(40) % 10), (x8[:20].clone(), torch.arange(20) % 10))
    _, _, rep = runs.run_structured(model, bundle, "l1", runs.Structured(macs=0.7))
    assert {r["layer"] for r in rep["left_out"]} >= {"c1", "c2", "c3"}
    assert any("tied" in r["reason"] for r in rep["left_out"])


@pytest.mark.parametrize("kind, words", [
    ("weight_norm", "parametrized"), ("spectral_norm", "parametrized"),
    ("old_weight_norm", "WeightNorm"), ("lazy", "lazy layer"), ("empty", "no parameters")])
def test_models_prunewise_cannot_save_are_refused_at_build(kind, words):
    from torch.nn.utils import parametrizations

    def build():
        if kind == "weight_norm":
            return nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 3)))
        if kind == "spectral_norm":
            return nn.Sequential(nn.Linear(4, 4), parametrizations.spectral_norm(nn.Linear(4, 3)))
        if kind == "old_weight_norm":
            return nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 3)))
        if kind == "lazy":
            return nn.Sequential(nn.LazyLinear(3))
        return nn.Sequential(nn.Flatten())
    with pytest.raises(PrunewiseError, match=words):
        checkpoints.built(build)


def test_user_code_that_exits_is_a_failure_of_the_users_code(tmp_path):
    from prunewise.cli import loading

    src = tmp_path / "bad.py"
    src.write_text("import sys\nsys.exit(0)\ndef f():\n    pass\n")
    with pytest.raises(PrunewiseError, match="SystemExit"):
        loading.load_factory(f"{src}:f")
    src.write_text("import sys\ndef f():\n    sys.exit(3)\n")
    with pytest.raises(PrunewiseError, match="factory failed: SystemExit: 3"):
        checkpoints.built(loading.load_factory(f"{src}:f"))


def test_non_finite_or_integer_outputs_are_one_line(tmp_path, digits):
    from prunewise.cli import loading

    class Scaled(nn.Module):
        def __init__(self, scale, cast=None):
            super().__init__()
            self.fc, self.scale, self.cast = nn.Linear(256, 10), scale, cast

        def forward(self, x):
            out = self.fc(x.flatten(1)) * self.scale
            return out if self.cast is None else out.to(self.cast)
    with pytest.raises(PrunewiseError, match="not finite"):
        loading.check_classes(Scaled(float("nan")), digits)
    with pytest.raises(PrunewiseError, match="int64: logits must be floating"):
        loading.check_classes(Scaled(1.0, torch.long), digits)
    with pytest.raises(PrunewiseError, match="not finite"):
        runs.measure_dense(Scaled(float("inf")), digits)
    # training on a batch whose loss is not finite stops at that step, naming it
    from prunewise import train

    with pytest.raises(PrunewiseError, match="training loss is nan at step 1"):
        train.fit(Scaled(float("nan")), digits, epochs=1, batch_size=64, progress=False)
