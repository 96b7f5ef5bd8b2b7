"""Causal language models end to end: HuggingFace folders (Llama-style with grouped-query
attention, GPT-2 with tied embeddings and Conv1D layers, OPT) built from configs, text data,
perplexity, the layer-by-layer walk, SparseGPT, tied weights, HF export; and their bad input."""
import json

import pytest
import torch

from helpers import assert_bad_input, invoke
from prunewise import checkpoints, hf, sequential, tasks
from prunewise import data as D
from prunewise.errors import PrunewiseError
from prunewise.pipeline import runs
from prunewise.plan import MaskPlan
from prunewise.unstructured import engine, sparsegpt

transformers = pytest.importorskip("transformers")

VOCAB = 260   # bytes and a few more


def configs():
    return {
        "llama": transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=64),
        "gpt2": transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                        n_positions=64, bos_token_id=0, eos_token_id=0),
        "opt": transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=64, word_embed_proj_dim=32,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=1),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A HuggingFace folder per family, random weights (seeded)."""
    out = {}
    for name, cfg in configs().items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        folder = tmp_path_factory.mktemp("hf") / name
        model.save_pretrained(str(folder))
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of .txt documents: a few Python standard library sources."""
    import inspect
    import json as j
    import textwrap

    folder = tmp_path_factory.mktemp("corpus")
    for i, mod in enumerate((j, textwrap, inspect)):
        (folder / f"sub{i % 2}").mkdir(exist_ok=True)
        (folder / f"sub{i % 2}" / f"{mod.__name__}.txt").write_text(
            inspect.getsource(mod)[:20000], encoding="utf-8")
    return folder


def text_bundle(corpus, seq_len=16):
    return D.load("text", corpus, seq_len=seq_len)


# ---- loading, saving, tied weights -------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_hf_load_gives_the_same_logits_and_saves_back(folders, family, tmp_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(folders[family])).eval()
    model = hf.load(folders[family])
    x = torch.randint(0, VOCAB, (2, 12))
    want = ref(x).logits
    assert torch.allclose(model(x).logits, want, atol=1e-5)
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    assert bool(model.prunewise_hf["transposed"]) == (family == "gpt2")
    hf.save(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert torch.allclose(back(x).logits, want, atol=1e-5)


def test_tied_weights_are_one_tensor_pruned_and_saved_once(folders, corpus, tmp_path):
    model = hf.load(folders["gpt2"])
    bundle = text_bundle(corpus)
    names = engine.prunable(model)
    assert "lm_head.weight" not in names and "transformer.wte.weight" not in names
    assert any(".attn.c_attn.weight" in n for n in names)   # GPT-2's Conv1D layers are in scope
    pruned, plan, rep = runs.run_unstructured(model, bundle, "magnitude",
                                              runs.Unstructured(0.5), task=tasks.causal_lm(),
                                              measurement=runs.Measurement(latency=False))
    assert abs(rep["sparsity"] - 0.5) < 1e-3
    assert pruned.lm_head.weight is pruned.transformer.wte.weight
    checkpoints.save_model(pruned, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    back = checkpoints.load_model(tmp_path / "ck", build=hf.factory(f"hf:{folders['gpt2']}"))
    x = bundle.test.x[:2]
    assert torch.equal(back(x).logits, pruned(x).logits)
    assert back.lm_head.weight is back.transformer.wte.weight


# ---- text data ---------------------------------------------------------------------------------

def test_text_splits_are_deterministic_by_document(corpus):
    a, b = text_bundle(corpus, 16), text_bundle(corpus, 16)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s).x, getattr(b, s).x)
        assert getattr(a, s).x.shape[1] == 16 and len(getattr(a, s)) > 0
    assert a.task == "causal_lm" and a.vocab == 256
    assert torch.equal(a.train.x, a.train.y)
    total = sum(len(getattr(a, s)) for s in ("train", "val", "test"))
    assert 0.6 < len(a.train) / total < 0.95


def test_one_text_file_is_split_by_paragraph(tmp_path):
    text = "\n\n".join(f"paragraph {i} " + "words " * 30 for i in range(40))
    (tmp_path / "one.txt").write_text(text)
    bundle = D.load("text", tmp_path / "one.txt", seq_len=32)
    assert min(len(bundle.train), len(bundle.val), len(bundle.test)) > 0


def test_tokens_file(tmp_path):
    from safetensors.torch import save_file
    save_file({"train": torch.arange(1000) % 50, "test": torch.arange(200) % 50},
              str(tmp_path / "ids.safetensors"))
    bundle = D.load("tokens", tmp_path / "ids.safetensors", seq_len=10)
    assert bundle.vocab == 50 and len(bundle.test) == 20 and len(bundle.val) == 10


@pytest.mark.parametrize("content, words", [
    (b"", "no text"), (b"\x00\x01binary", "not a text file"), (b"ab", "fewer than one sequence"),
])
def test_bad_corpus_is_one_line(tmp_path, content, words):
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(PrunewiseError, match=words):
        D.load("text", tmp_path, seq_len=16)


def test_folder_without_text_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(PrunewiseError, match="no .txt file"):
        D.load("text", tmp_path, seq_len=16)


# ---- the walk ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_walk_reads_every_layer_input_exactly_block_by_block(folders, family):
    model = hf.load(folders[family])
    data = [(torch.randint(0, 256, (3, 12)),) * 2 for _ in range(2)]
    names = [n.rpartition(".")[0] for n in engine.prunable(model)]
    walk = sequential.Walk(model, data, names)
    assert len(walk.blocks) == 2
    if family == "llama":   # q, k, v read one tensor; so do gate and up
        assert ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                "model.layers.0.self_attn.v_proj"] in walk.groups
        assert ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"] in walk.groups
    whole = sequential.Walk(model, data, names, blocks=False)   # the whole model's pass
    assert not whole.blocks and whole.groups == walk.groups
    for group in walk.groups:
        got, want = list(walk.inputs(group)), list(whole.inputs(group))
        assert len(got) == len(data)
        for xs, ref in zip(got, want):
            for n in group:
                assert torch.equal(xs[n], ref[n])


def test_walk_of_a_cnn_uses_its_sequential_layers(trained_resnet20, digits):
    from prunewise import models
    model = models.create("vgg16_bn", num_classes=10, in_channels=1).eval()
    data = list(D.batches(digits.train, digits, 16, limit=32))
    walk = sequential.Walk(model, data, [n.rpartition(".")[0] for n in engine.prunable(model)])
    assert walk.blocks and walk.blocks[0] == "features.0"


# ---- SparseGPT ---------------------------------------------------------------------------------

def naive_obs(W, H, counts, damp=0.01):
    """Exact OBS one column at a time with explicit inverses of the trailing Gram blocks."""
    W, H = W.double().clone(), H.double().clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i in range(W.shape[1]):
        inv = torch.linalg.inv(H[i:, i:])
        d = inv[0, 0]
        score = W[:, i] ** 2 / d
        drop = torch.topk(score, counts[i], largest=False).indices
        keep[drop, i] = False
        q = torch.where(keep[:, i], W[:, i], torch.zeros_like(W[:, i]))
        err = (W[:, i] - q) / d
        W[:, i:] -= err[:, None] * inv[0][None, :]
    return W, keep


def test_sparsegpt_with_one_column_blocks_is_exact_obs():
    torch.manual_seed(0)
    X = torch.randn(6, 40, dtype=torch.float64)
    H, W = X @ X.T, torch.randn(5, 6)
    counts = sparsegpt._block_counts(6, 5, 15, 1)
    assert sum(counts) == 15
    got, keep = sparsegpt.prune_matrix(W, H, 15, block=1)
    want, want_keep = naive_obs(W, H, counts)
    assert torch.equal(keep, want_keep)
    assert torch.allclose(got.double(), want * want_keep, atol=1e-4)
    assert int((~keep).sum()) == 15 and bool((got[~keep] == 0).all())


def test_sparsegpt_reduces_the_layer_error_below_magnitude():
    torch.manual_seed(1)
    X = torch.randn(64, 16) @ torch.randn(16, 500) + 0.1 * torch.randn(64, 500)  # correlated
    W = torch.randn(32, 64)
    got, keep = sparsegpt.prune_matrix(W, (X @ X.T).double(), 32 * 32, block=16)
    mag = W * (W.abs() > W.abs().flatten().kthvalue(32 * 32).values)
    err = ((got - W) @ X).norm()
    assert int(keep.sum()) == 32 * 32 and err < 0.7 * ((mag - W) @ X).norm()


def test_sparsegpt_nm_pattern():
    torch.manual_seed(2)
    X = torch.randn(16, 100)
    _, keep = sparsegpt.prune_matrix(torch.randn(8, 16), (X @ X.T).double(), None, block=8,
                                     nm=(2, 4))
    assert bool((keep.reshape(8, 4, 4).sum(-1) == 2).all())


def test_sparsegpt_run_updates_weights_and_the_plan_carries_them(folders, corpus, tmp_path):
    model = hf.load(folders["llama"])
    bundle = text_bundle(corpus)
    settings = runs.Unstructured(0.5, samples=16, repair=runs.Repair(enabled=True, samples=16))
    pruned, plan, rep = runs.run_unstructured(model, bundle, "sparsegpt", settings,
                                              task=tasks.causal_lm(),
                                              measurement=runs.Measurement(latency=False))
    assert rep["metric"]["name"] == "perplexity" and rep["scores"]["repaired"]["test"] > 1
    assert plan.weights is not None and set(plan.weights) == set(plan.masks)
    per = plan.per_layer()
    assert all(abs(v - 0.5) < 0.02 for v in per.values())    # uniform per layer
    dense_w = dict(model.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plan.weights[name] * plan.masks[name], dense_w[name] * plan.masks[name])
    plan.save(tmp_path / "plan")
    back = MaskPlan.load(tmp_path / "plan")
    assert torch.equal(back.weights[name], plan.weights[name])
    assert "prompt" in rep["sample"] and isinstance(rep["sample"]["pruned"], str)


# ---- the command line --------------------------------------------------------------------------

def test_cli_prunes_an_hf_folder_then_evals_and_exports_it(folders, corpus, tmp_path):
    folder = folders["gpt2"]
    out = tmp_path / "p"
    r = invoke("prune", folder, "--model", f"hf:{folder}", "--data", "text", "--root", corpus,
               "--seq-len", "16", "--method", "sparsegpt", "--nm", "2:4", "--samples", "16",
               "--latency-repeats", "1", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "perplexity" and rep["config"]["prune"]["nm"] in ("2:4", [2, 4])
    assert "## Sample" in (out / "report.md").read_text()
    r = invoke("eval", out / "model", "--model", f"hf:{folder}", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    # the saved model is the repaired one (no fine-tuning: repair on by default)
    assert rep["config"]["prune"]["repair"]["enabled"] is True
    assert abs(got["perplexity"] - rep["scores"]["repaired"]["test"]) < 1e-6 * got["perplexity"]
    r = invoke("info", folder, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["macs"] > 0
    r = invoke("export", out, "--model", f"hf:{folder}", "--hf", tmp_path / "hfout")
    assert r.returncode == 0, r.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hfout"))
    zeros = sum(int((p == 0).sum()) for n, p in back.named_parameters() if ".h." in n
                and p.dim() == 2)
    assert zeros > 0


def test_cli_bad_language_input(folders, corpus, tmp_path):
    folder = folders["llama"]
    base = ("prune", folder, "--method", "magnitude", "--sparsity", "0.5", "--quiet")
    assert_bad_input(invoke(*base, "--out", tmp_path / "a"), "--data text")
    assert_bad_input(invoke(*base, "--data", "text", "--root", corpus, "--seq-len", "100",
                            "--out", tmp_path / "b"), "--seq-len 100", "64 positions")
    (tmp_path / "nocfg").mkdir()
    assert_bad_input(invoke(*base[:2], "--model", f"hf:{tmp_path / 'nocfg'}", *base[2:],
                            "--data", "text", "--root", corpus, "--out", tmp_path / "c"),
                     "no config.json")
    (tmp_path / "nowts").mkdir()
    (tmp_path / "nowts" / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "nowts" / "pytorch_model.bin").write_bytes(b"pickle")
    assert_bad_input(invoke("eval", tmp_path / "nowts", "--data", "text", "--root", corpus),
                     "pickle")
    from safetensors.torch import save_file
    save_file({"train": torch.arange(600) % 300, "test": torch.arange(100)},
              str(tmp_path / "ids.safetensors"))
    assert_bad_input(invoke("eval", folder, "--data", "tokens", "--root",
                            tmp_path / "ids.safetensors", "--seq-len", "16"), "vocabulary")
    assert_bad_input(invoke(*base, "--data", "text", "--root", corpus, "--seq-len", "16",
                            "--nm", "2:3", "--out", tmp_path / "d"), "2:3")
    assert_bad_input(invoke(*base, "--data", "text", "--root", corpus, "--seq-len", "16",
                            "--samples", "100000", "--out", tmp_path / "e"), "--samples 100000")
    for p in ("a", "b", "c", "d", "e"):
        assert not (tmp_path / p).exists()


def test_cli_trains_an_hf_architecture_on_text(folders, corpus, tmp_path):
    folder = folders["opt"]
    out = tmp_path / "t"
    r = invoke("train", "--model", f"hf:{folder}", "--data", "text", "--root", corpus,
               "--seq-len", "16", "--epochs", "1", "--batch-size", "64", "--optimizer", "adam",
               "--lr", "0.003", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["metric"]["name"] == "perplexity" and meta["data"]["seq_len"] == 16
    assert meta["test_score"] < 200   # learned something: 256 byte ids are 256 at chance
    r = invoke("eval", out, "--model", f"hf:{folder}", "--json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["perplexity"] - meta["test_score"]) < 1e-3 * meta["test_score"]
    before = (out / "model.safetensors").read_bytes()   # a second train never overwrites it
    assert_bad_input(invoke("train", "--model", f"hf:{folder}", "--data", "text", "--root",
                            corpus, "--epochs", "1", "--quiet", "--out", out), "already holds")
    assert (out / "model.safetensors").read_bytes() == before


def test_a_tokenizer_beyond_the_model_vocabulary_is_refused(corpus, tmp_path):
    cfg = configs()["llama"]
    cfg.vocab_size = 64                       # a byte tokenizer has about 260 ids
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "m"))
    transformers.ByT5Tokenizer().save_pretrained(str(tmp_path / "m"))
    assert hf.tokenizer(tmp_path / "m") is not None
    assert_bad_input(invoke("prune", tmp_path / "m", "--method", "magnitude", "--sparsity", "0.5",
                            "--data", "text", "--root", corpus, "--seq-len", "16", "--quiet",
                            "--out", tmp_path / "o"), "its tokenizer has", "64 ids")
    assert not (tmp_path / "o").exists()
