"""Breadth: structured pruning (SLIMING at 50% of the MACs) and magnitude masks (50%) on 22
HuggingFace architectures built from tiny configs (random weights): does it run, is the
budget met, does the pruned model run and reload bit-identically from a prunewise checkpoint.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hf_breadth.py   # -> results/hf_breadth.json
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def families() -> dict:
    """name -> (config builder, auto class, example input builder)."""
    import transformers as T
    text = lambda: torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))  # noqa: E731
    image = lambda size=32: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))  # noqa: E731
    lm = T.AutoModelForCausalLM
    cls = T.AutoModelForSequenceClassification
    img = T.AutoModelForImageClassification
    dec = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               max_position_embeddings=32)
    enc = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=32, num_labels=3)
    vis = dict(image_size=32, num_channels=3, num_labels=3)
    return {
        "llama": (lambda: T.LlamaConfig(**dec, num_attention_heads=8, num_key_value_heads=2), lm, text),
        "mistral": (lambda: T.MistralConfig(**dec, num_attention_heads=8, num_key_value_heads=2), lm, text),
        "qwen2": (lambda: T.Qwen2Config(**dec, num_attention_heads=8, num_key_value_heads=2), lm, text),
        "phi": (lambda: T.PhiConfig(**dec, num_attention_heads=4), lm, text),
        "gpt2": (lambda: T.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=32), lm, text),
        "opt": (lambda: T.OPTConfig(vocab_size=64, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=32,
                                    word_embed_proj_dim=64), lm, text),
        "bert": (lambda: T.BertConfig(**enc), cls, text),
        "roberta": (lambda: T.RobertaConfig(**enc, pad_token_id=1), cls, text),
        "distilbert": (lambda: T.DistilBertConfig(vocab_size=64, dim=64, hidden_dim=128, n_layers=2,
                                                  n_heads=4, max_position_embeddings=32, num_labels=3), cls, text),
        "deberta-v2": (lambda: T.DebertaV2Config(**enc), cls, text),
        "electra": (lambda: T.ElectraConfig(**enc, embedding_size=64), cls, text),
        "albert": (lambda: T.AlbertConfig(**enc, embedding_size=64), cls, text),
        "xlm-roberta": (lambda: T.XLMRobertaConfig(**enc, pad_token_id=1), cls, text),
        "vit": (lambda: T.ViTConfig(**vis, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, patch_size=8), img, image),
        "deit": (lambda: T.DeiTConfig(**vis, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, patch_size=8),
                 T.DeiTForImageClassification, image),   # its auto mapping fails in 5.x
        "beit": (lambda: T.BeitConfig(**vis, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, patch_size=8,
                                      use_relative_position_bias=True), img, image),
        "swin": (lambda: T.SwinConfig(**vis, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                      patch_size=4, window_size=4), img, image),
        "convnext": (lambda: T.ConvNextConfig(**vis, hidden_sizes=[16, 32], depths=[1, 1],
                                              num_stages=2), img, image),
        "resnet": (lambda: T.ResNetConfig(**vis, hidden_sizes=[16, 32], depths=[1, 1],
                                          embedding_size=16), img, image),
        "mobilevit": (lambda: T.MobileViTConfig(**vis, hidden_sizes=[16, 24, 32],
                                                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48]), img, image),
        "mobilenet_v2": (lambda: T.MobileNetV2Config(**vis, depth_multiplier=0.35), img, image),
        "regnet": (lambda: T.RegNetConfig(**vis, hidden_sizes=[16, 32], depths=[1, 1],
                                          embedding_size=16, groups_width=8), img, image),
    }


def one(name: str) -> dict:
    from prunewise import checkpoints, hf, measure
    from prunewise.structured import sliming
    from prunewise.unstructured import engine
    make, auto, inputs = families()[name]
    hf._quiet()

    def build():
        torch.manual_seed(0)
        model = (auto.from_config(make()) if hasattr(auto, "from_config") else auto(make()))
        model = model.float().eval()
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False
        hf.linearize(model)
        return model

    model, x = build(), inputs()
    row = {"family": name, "params": sum(p.numel() for p in model.parameters())}
    t0 = time.perf_counter()
    try:
        new, plan = sliming.prune(model, x, macs=0.5)
        row["structured_seconds"] = time.perf_counter() - t0
        row["macs_ratio"] = measure.macs(new, x) / measure.macs(model, x)
        row["budget_met"] = bool(0.49 <= row["macs_ratio"] <= 0.5 + 1e-9)
        row["skipped_groups"] = plan.meta["groups"]["skipped"]
        with tempfile.TemporaryDirectory() as d:
            checkpoints.save_model(new, Path(d) / "ck")
            back = checkpoints.load_model(Path(d) / "ck", build=build)
            with torch.no_grad():
                a, b = (getattr(m(x), "logits", None) for m in (new, back))
            row["structured_reload_identical"] = bool(torch.equal(a, b))
        row["structured"] = "ok"
    except Exception as e:  # noqa: BLE001 - the finding
        row["structured"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    try:
        scope = engine.prunable(model)
        named = dict(model.named_parameters())
        row["mask_scope_params"] = sum(named[n].numel() for n in scope)
        row["masks"] = "ok" if scope else "empty scope"
    except Exception as e:  # noqa: BLE001
        row["masks"] = f"{type(e).__name__}: {e}"
    return row


def main() -> None:
    names = sys.argv[1:] or list(families())
    out = HERE / "results" / "hf_breadth.json"
    rows = []
    for n in names:
        try:
            r = one(n)
        except Exception:  # noqa: BLE001
            r = {"family": n, "structured": traceback.format_exc(limit=1)[-300:]}
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "skipped_groups"}), flush=True)
    ok = [r for r in rows if r.get("structured") == "ok" and r.get("structured_reload_identical")]
    summary = {"families": len(rows), "structured_ok": len(ok),
               "budget_met": sum(bool(r.get("budget_met")) for r in ok), "rows": rows}
    if names == list(families()):
        out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()
