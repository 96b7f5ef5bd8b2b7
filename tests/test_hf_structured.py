"""Structured pruning of HuggingFace models, decoder language models first: whole query heads (grouped-query attention
kept consistent: the same number of query heads in every key-value group), MLP channels
(gate / up / down together), the residual width whole; on every decoder family built from its
config. The pruned model runs, generates, reloads through a prunewise checkpoint and, when its
config can say so, through ``from_pretrained``."""
import json

import pytest
import torch

from helpers import invoke
from prunewise import checkpoints, hf, layers, measure
from prunewise.errors import PrunewiseError
from prunewise.structured import baselines, sliming, surgery
from prunewise.structured import prune as structured_prune

transformers = pytest.importorskip("transformers")

V = 64


def decoder_configs():
    """Tiny decoders: grouped-query (Llama, Mistral, Qwen2, Qwen3), one key-value head per query
    head (Llama MHA, Phi with partial rotary), fused q/k/v (GPT-2, Phi-3; GPT-NeoX head by
    head), fused gate and up (Phi-3), OPT."""
    T = transformers
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=32)
    return {
        "llama": T.LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=2),
        "llama-mha": T.LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=4),
        "mistral": T.MistralConfig(**common, num_attention_heads=8, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**common, num_attention_heads=8, num_key_value_heads=2),
        "qwen3": T.Qwen3Config(**common, num_attention_heads=8, num_key_value_heads=4,
                               head_dim=16),
        "phi": T.PhiConfig(**common, num_attention_heads=4),
        "phi3": T.Phi3Config(**common, num_attention_heads=8, num_key_value_heads=2,
                             pad_token_id=0),
        "gpt_neox": T.GPTNeoXConfig(**common, num_attention_heads=4),
        "gpt2": T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                             bos_token_id=0, eos_token_id=0),
        "opt": T.OPTConfig(vocab_size=V, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=32,
                           word_embed_proj_dim=64, bos_token_id=0, eos_token_id=0,
                           pad_token_id=1),
    }


def build(name):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(decoder_configs()[name])
    return hf._ready(model, "built")


X = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("family", sorted(decoder_configs()))
def test_decoder_families_prune_heads_and_mlp_to_the_budget(family, tmp_path):
    model = build(family)
    ref = model(X).logits
    budget = 0.6
    before = layers.attention_heads(model)
    for method in ("sliming", "l1"):
        if method == "sliming":
            new, plan = sliming.prune(model, X, params=budget)
        else:
            new, plan = structured_prune(model, X, baselines.uniform_configure(
                _Budget(params=budget)), baselines.l1_step)
        ratio = params(new) / params(model)
        slack = 0.01
        assert budget - slack <= ratio <= budget + 1e-9, method
        assert plan.meta["predicted_macs"] == pytest.approx(measure.macs(new, X), rel=1e-9)
        heads = layers.attention_heads(new)
        for n, info in heads.items():   # grouped-query: every key-value head stays
            assert info["kv_heads"] in (before[n]["kv_heads"], info["heads"])
            assert info["head_dim"] == before[n]["head_dim"]
        if method == "l1":              # uniform: every layer loses heads
            assert all(heads[n]["heads"] < before[n]["heads"] for n in heads)
        assert torch.isfinite(new(X).logits).all() and new(X).logits.shape == ref.shape
        out = new.generate(X[:1, :4], max_new_tokens=4, do_sample=False)
        assert out.shape == (1, 8)
    assert torch.equal(model(X).logits, ref)                        # the input model untouched
    checkpoints.save_model(new, tmp_path / "ck")
    back = checkpoints.load_model(tmp_path / "ck", build=lambda: build(family))
    assert torch.equal(back(X).logits, new(X).logits)


def test_grouped_query_heads_go_evenly_per_key_value_group():
    model = build("llama")      # 8 query heads, 2 key-value heads, head_dim 8
    dg = surgery.build_graph(model, X)
    g = next(i for i in surgery.groups(dg, model) if i.name.endswith("layers.0.self_attn"))
    assert (g.size, g.head, g.parts, g.unit) == (64, 8, 2, 16)
    uneven = torch.cat([torch.arange(0, 24), torch.arange(32, 40)])   # 3 heads + 1 head
    with pytest.raises(PrunewiseError, match="unequal"):
        surgery.check_valid(g, uneven)
    even = torch.cat([torch.arange(0, 16), torch.arange(48, 64)])     # heads 0,1 and 6,7
    plan = surgery.make_plan(model, [g], {g.name: even})
    new = surgery.apply(model, plan, X)
    attn = new.model.layers[0].self_attn
    assert attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16
    assert attn.num_key_value_groups == 2 and attn.o_proj.in_features == 32
    # removing heads = zeroing their columns of o_proj in the dense model
    masked = build("llama")
    with torch.no_grad():
        keep = torch.zeros(64, dtype=torch.bool)
        keep[even] = True
        masked.model.layers[0].self_attn.o_proj.weight[:, ~keep] = 0
    assert torch.allclose(new(X).logits, masked(X).logits, atol=1e-5)


def test_fused_layout_is_checked_head_by_head_or_queries_first():
    model = build("gpt2")
    model.transformer.h[0].attn.forward = _reads(model.transformer.h[0].attn, "interleaved")
    model.transformer.h[1].attn.forward = _reads(model.transformer.h[1].attn, "strided")
    heads = surgery.checked_heads(model, X)
    first, second = heads["transformer.h.0.attn"], heads["transformer.h.1.attn"]
    assert first["interleaved"] and first["problem"] == ""     # understood: cut head by head
    assert "does not match" in second["problem"]                # misread: left whole
    dg = surgery.build_graph(model, X)
    g = {i.name: i for i in surgery.groups(dg, model)}
    assert g["transformer.h.0.attn"].prunable and not g["transformer.h.1.attn"].prunable
    new, _ = structured_prune(model, X, baselines.uniform_configure(_Budget(params=0.7)),
                              baselines.l1_step)
    assert new.transformer.h[0].attn.c_attn.out_features < 192
    assert new.transformer.h[1].attn.c_attn.out_features == 192


def _reads(attn, layout):
    """A GPT-2 attention forward reading its fused q/k/v in another layout (bound to ``attn``,
    so a copy of the module reads its own weights)."""
    import types

    def forward(self, hidden_states, *args, **kwargs):
        b, t, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states)
        if layout == "interleaved":
            q, k, v = qkv.view(b, t, -1, 3 * self.head_dim).transpose(1, 2).chunk(3, dim=-1)
        else:   # head h holds channels h, h + heads, h + 2 heads, ...
            q, k, v = (z.view(b, t, self.head_dim, -1).permute(0, 3, 1, 2)
                       for z in qkv.split(self.split_size, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        if layout != "interleaved":
            return self.c_proj(y.permute(0, 2, 3, 1).reshape(b, t, -1)), None
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1)), None
    return types.MethodType(forward, attn)


def test_fused_gate_and_up_halves_are_cut_together_once_checked():
    import types
    model = build("phi3")
    mlp = model.model.layers[1].mlp

    def odd_even(self, hidden_states):   # gate and up interleaved, not halves
        both = self.gate_up_proj(hidden_states)
        return self.down_proj(self.activation_fn(both[..., ::2]) * both[..., 1::2])
    mlp.forward = types.MethodType(odd_even, mlp)
    dg = surgery.build_graph(model, X)
    g = {i.name: i for i in surgery.groups(dg, model)}
    first, second = g["model.layers.0.mlp.gate_up_proj"], g["model.layers.1.mlp.gate_up_proj"]
    assert first.prunable and first.halves == "model.layers.0.mlp.down_proj" and first.size == 96
    assert not second.prunable and "does not match" in second.reason


def test_structured_decoder_is_fast_and_dependency_analysis_bounded():
    import time
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=344,
                                   num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = hf._ready(transformers.AutoModelForCausalLM.from_config(cfg), "built")
    t = time.perf_counter()
    new, plan = structured_prune(model, torch.randint(0, V, (1, 64)),
                                 baselines.uniform_configure(_Budget(params=0.5)),
                                 baselines.l1_step)
    assert time.perf_counter() - t < 30
    assert params(new) / params(model) <= 0.5


class _Budget:
    def __init__(self, macs=None, params=None):
        self.macs, self.params, self.min_channels = macs, params, 1


@pytest.fixture()
def llama_folder(tmp_path):
    cfg = decoder_configs()["llama"]
    cfg.vocab_size = 260
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(tmp_path / "llama"))
    return tmp_path / "llama"


@pytest.fixture()
def corpus(tmp_path):
    import inspect
    import textwrap
    (tmp_path / "c").mkdir()
    for mod in (json, textwrap, inspect):
        (tmp_path / "c" / f"{mod.__name__}.txt").write_text(inspect.getsource(mod)[:20000])
    return tmp_path / "c"


def test_cli_structured_llama_reloads_and_exports_uniform_widths(llama_folder, corpus, tmp_path):
    out = tmp_path / "p"
    r = invoke("prune", "sliming", llama_folder, "--method", "l1", "--params", "0.7",
               "--data", "text", "--root", corpus, "--seq-len", "16", "--repair",
               "--repair-samples", "16", "--latency-repeats", "1", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "perplexity" and rep["params"]["ratio"] <= 0.7
    assert rep["scores"]["repaired"] is not None
    r = invoke("eval", out / "model", "--model", f"hf:{llama_folder}", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["perplexity"]
    assert got == pytest.approx(rep["scores"]["repaired"]["test"], rel=1e-5)
    r = invoke("export", out, "--model", f"hf:{llama_folder}", "--hf", tmp_path / "hfout")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "hfout" / "config.json").read_text())
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hfout"))
    assert cfg["num_attention_heads"] < 8 and cfg["head_dim"] == 8
    assert cfg["intermediate_size"] < 96 and cfg["num_key_value_heads"] == 2
    assert params(back) == rep["params"]["pruned"]


def test_hf_export_refuses_widths_a_config_cannot_hold(tmp_path):
    model = build("gpt2")
    new, _ = structured_prune(model, X, baselines.uniform_configure(_Budget(params=0.6)),
                              baselines.l1_step)
    with pytest.raises(PrunewiseError, match="prunewise checkpoint"):
        hf.save(new, tmp_path / "g")
    assert not (tmp_path / "g").exists()
    model = build("llama")
    new, _ = sliming.prune(model, X, params=0.6)    # SLIMING: a width per layer
    if len({i["heads"] for i in layers.attention_heads(new).values()}) > 1:
        with pytest.raises(PrunewiseError, match="different layers"):
            hf.save(new, tmp_path / "l")
        assert not (tmp_path / "l").exists()


def encoder_configs():
    """Encoders and vision transformers whose structure took a rule of its own: DistilBERT's
    and DeBERTa-v2's projection names, BEiT's and Swin's per-head relative-position tables,
    ALBERT's one block called twice (its MACs counted for both calls)."""
    T = transformers
    enc = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=32, num_labels=3)
    vis = dict(image_size=32, num_channels=3, num_labels=3)
    text = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seq, img = T.AutoModelForSequenceClassification, T.AutoModelForImageClassification
    return {
        "distilbert": (T.DistilBertConfig(vocab_size=V, dim=64, hidden_dim=128, n_layers=2,
                                          n_heads=4, max_position_embeddings=32, num_labels=3),
                       seq, text),
        "deberta-v2": (T.DebertaV2Config(**enc), seq, text),
        "albert": (T.AlbertConfig(**enc, embedding_size=64), seq, text),
        "beit": (T.BeitConfig(**vis, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, patch_size=8,
                              use_relative_position_bias=True), img, image),
        "swin": (T.SwinConfig(**vis, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                              patch_size=4, window_size=4), img, image),
    }


@pytest.mark.parametrize("family", sorted(encoder_configs()))
def test_encoder_and_vision_families_prune_whole_heads(family, tmp_path):
    cfg, auto, x = encoder_configs()[family]

    def make():
        torch.manual_seed(0)
        return auto.from_config(cfg).eval()

    model = make()
    new, plan = sliming.prune(model, x, macs=0.5)
    ratio = measure.macs(new, x) / measure.macs(model, x)
    assert 0.49 <= ratio <= 0.5 + 1e-9
    assert plan.meta["predicted_macs"] == pytest.approx(measure.macs(new, x), rel=1e-9)
    heads, cut = layers.attention_heads(new), 0
    for n, info in heads.items():
        for t in layers.head_tables(new, n, heads):
            assert new.get_parameter(t).shape[-1] == info["heads"]   # tables cut with heads
            cut += info["heads"] < layers.attention_heads(model)[n]["heads"]
    assert cut > 0 or family not in ("beit", "swin")
    assert torch.isfinite(new(x).logits).all()
    checkpoints.save_model(new, tmp_path / "ck")
    back = checkpoints.load_model(tmp_path / "ck", build=make)
    assert torch.equal(back(x).logits, new(x).logits)


def test_hf_export_of_narrower_mlps_writes_the_config_field(tmp_path):
    model = build("gpt2")                 # heads whole: GPT-2's config can hold the MLP width
    dg = surgery.build_graph(model, X)
    mlps = [g for g in surgery.groups(dg, model) if g.prunable and g.name.endswith("c_fc")]
    assert len(mlps) == 2
    plan = surgery.make_plan(model, mlps, {g.name: torch.arange(0, g.size, 2) for g in mlps})
    new = surgery.apply(model, plan, X)
    hf.save(new, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["n_inner"] == 128 and cfg["n_head"] == 4
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "g")).eval()
    assert torch.allclose(back(X).logits, new(X).logits, atol=1e-5)
