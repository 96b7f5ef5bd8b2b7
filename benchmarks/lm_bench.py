"""Language models, post-training: a Llama-style model (grouped-query attention, RoPE) and a
GPT-2-style model (tied embeddings, Conv1D) trained here on the Python standard library's
sources (bytes), pruned without training by magnitude, Wanda, OBS + repair, SparseGPT
(+ repair) and FVW at 50%, 2:4 and 70% of the decoder layers' weights (embeddings and the
output head dense, as SparseGPT and llm-compressor leave them); and, when llm-compressor is
installed in a second virtualenv (LLMC_PYTHON; never a prunewise dependency), its SparseGPT and
Wanda on the same model and calibration set. Every cell runs in a fresh process that reports
its test perplexity, seconds and peak resident memory.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_bench.py train --family llama --seed 0
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_bench.py run --family llama --seed 0
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_bench.py run --family llama --structured
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_bench.py depth    # SparseGPT, 2-16 layers

Results: benchmarks/results/lm/<family>-s<seed>.json and depth.json; base models:
benchmarks/checkpoints/lm-<family>-s<seed>/ (HuggingFace folders, float16).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lm"
SEQ, CALIB, TRAIN_SEQS = 128, 128, 2400
BUDGETS = ("0.5", "2:4", "0.7")
METHODS = ("magnitude", "wanda", "obs+repair", "sparsegpt", "sparsegpt+repair", "fvw+repair")
LLMC = ("llmc-sparsegpt", "llmc-wanda")
#: Structured budgets: the share of the decoder blocks' (attention + MLP) parameters removed.
STRUCTURED = ("s0.2", "s0.5")
STRUCTURED_METHODS = ("l1", "l1+repair", "sliming", "sliming+repair")


def corpus() -> Path:
    """The standard library's top-level sources as .txt files (a fixed, sorted list)."""
    out = Path(os.environ.get("LM_CORPUS", "/tmp/prunewise-stdlib-corpus"))
    if not out.is_dir():
        out.mkdir(parents=True)
        src = Path(sysconfig.get_paths()["stdlib"])
        for p in sorted(src.glob("*.py")):
            (out / (p.stem + ".txt")).write_bytes(p.read_bytes())
    return out


#: Sequences of the test and validation splits the benchmark scores on (the first ones).
TEST_SEQS, VAL_SEQS = 1000, 500


def bundle(full: bool = False, val: bool = True):
    from prunewise import data as D
    b = D.load("text", corpus(), seq_len=SEQ)
    if not full:   # cells score the test split only (the validation split picks nothing)
        b.test, b.val = b.test.subset(range(TEST_SEQS)), b.val.subset(range(VAL_SEQS if val else 0))
    return b


def config(family: str, layers: int = 4):
    import transformers
    if family == "llama":
        return transformers.LlamaConfig(vocab_size=260, hidden_size=256, intermediate_size=688,
                                        num_hidden_layers=layers, num_attention_heads=8,
                                        num_key_value_heads=2, max_position_embeddings=SEQ,
                                        tie_word_embeddings=False)
    return transformers.GPT2Config(vocab_size=260, n_embd=256, n_layer=layers, n_head=8,
                                   n_positions=SEQ, bos_token_id=0, eos_token_id=0)


def folder(family: str, seed: int) -> Path:
    return HERE / "checkpoints" / f"lm-{family}-s{seed}"


def train_base(family: str, seed: int, epochs: int) -> None:
    import transformers

    from prunewise import hf, tasks, train
    torch.manual_seed(seed)
    b = bundle()
    b.train = b.train.subset(torch.randperm(len(b.train),
                                            generator=torch.Generator().manual_seed(seed))[:TRAIN_SEQS])
    model = transformers.AutoModelForCausalLM.from_config(config(family))
    model.config.use_cache = False
    t0 = time.time()
    hist = train.fit(model, b, train.Training(epochs=epochs, lr=2e-3, optimizer="adam",
                                              weight_decay=0.0, batch_size=32), seed=seed,
                     task=tasks.causal_lm(), desc=f"train {family}")
    ppl = train.evaluate_split(model, b, "test", task=tasks.causal_lm())["perplexity"]
    model.config.use_cache = True
    model.half().save_pretrained(str(folder(family, seed)))
    info = {"family": family, "seed": seed, "epochs": epochs, "seconds": time.time() - t0,
            "test_perplexity_fp32": ppl, "params": sum(p.numel() for p in model.parameters()),
            "best_epoch": hist["best_epoch"]}
    test = train.evaluate_split(hf.load(folder(family, seed)), b, "test", task=tasks.causal_lm())
    info["test_perplexity"] = test["perplexity"]
    (folder(family, seed) / "prunewise-train.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def settings_of(method: str, budget: str):
    from prunewise.pipeline import runs
    repair = runs.Repair(enabled=method.endswith("+repair"), samples=CALIB, batch_size=16)
    nm = budget if ":" in budget else None
    sparsity = 0.5 if nm else float(budget)
    base = method.split("+")[0]
    options = None
    keep = 0.8 if base == "fvw" else None
    if base == "fvw":
        from prunewise.methods import FVWSettings
        options = FVWSettings(alpha=1e-4)
    return base, runs.Unstructured(sparsity, samples=CALIB, batch_size=16, keep=keep, nm=nm,
                                   repair=repair, options=options, track_accuracy=False)


def cell(family: str, seed: int, method: str, budget: str) -> dict:
    """One pruning in this process: perplexity, seconds, peak memory."""
    from prunewise import hf, tasks, train
    from prunewise.pipeline import runs
    b = bundle(val=False)
    model = hf.load(folder(family, seed))
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if method == "dense":
        pruned = model
    elif method.startswith("llmc-"):
        pruned = llmc(model, b, method, budget)
    elif budget.startswith("s"):
        return structured_cell(model, b, family, seed, method, budget, weights_mb, start_rss)
    else:   # timed: pruning and repair (not the pipeline's measuring of both models)
        base, settings = settings_of(method, budget)
        pruned, plan, rep = runs.run_unstructured(
            model, b, base, settings, task=tasks.causal_lm(), seed=seed,
            measurement=runs.Measurement(latency=False))
        seconds = rep["stage_seconds"]["prune"] + rep["stage_seconds"]["repair"]
        ppl = rep["scores"]["repaired" if settings.repair.enabled else "pruned"]["test"]
    if method == "dense" or method.startswith("llmc-"):
        seconds = time.perf_counter() - t0
        ppl = train.evaluate_split(pruned, b, "test", task=tasks.causal_lm())["perplexity"]
    from prunewise.unstructured import engine
    named = dict(pruned.named_parameters())
    scope = engine.prunable(pruned)
    zeros = sum(int((named[n] == 0).sum()) for n in scope)
    return {"family": family, "seed": seed, "method": method, "budget": budget,
            "perplexity": ppl, "seconds": seconds, "weights_mb": weights_mb,
            "sparsity": zeros / sum(named[n].numel() for n in scope),
            "rss_before_mb": start_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def block_params(model) -> int:
    """Parameters of the decoder blocks' linear layers (attention and MLP)."""
    return sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
               for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (".layers." in n or ".h." in n))


def structured_cell(model, b, family, seed, method, budget, weights_mb, start_rss) -> dict:
    """Heads and MLP channels: ``budget`` "sX" removes X of the blocks' parameters (the
    embeddings and the output head stay), as a params budget of the whole model."""
    from prunewise import layers, tasks
    from prunewise.pipeline import runs
    total = sum(p.numel() for p in model.parameters())
    keep = 1 - float(budget[1:]) * block_params(model) / total
    repair = runs.Repair(enabled=method.endswith("+repair"), samples=CALIB, batch_size=16)
    settings = runs.Structured(params=keep, repair=repair)
    pruned, plan, rep = runs.run_structured(
        model, b, method.split("+")[0], settings, task=tasks.causal_lm(), seed=seed,
        measurement=runs.Measurement(latency=False))
    seconds = rep["stage_seconds"]["prune"] + rep["stage_seconds"]["repair"]
    ppl = rep["scores"]["repaired" if repair.enabled else "pruned"]["test"]
    return {"family": family, "seed": seed, "method": method, "budget": budget,
            "perplexity": ppl, "seconds": seconds, "prune_seconds": rep["stage_seconds"]["prune"],
            "weights_mb": weights_mb, "params_kept": keep,
            "block_params_removed": 1 - block_params(pruned) / block_params(model),
            "heads": {n: i["heads"] for n, i in layers.attention_heads(pruned).items()},
            "rss_before_mb": start_rss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def llmc(model, b, method: str, budget: str):
    """llm-compressor's oneshot on the same model and the same calibration sequences."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from prunewise import data as D
    ids = next(iter(D.batches(b.train, b, CALIB, shuffle=True, seed=0, limit=CALIB)))[0]
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * SEQ] * len(ids)})
    nm = budget if ":" in budget else "0:0"
    sparsity = 0.5 if ":" in budget else float(budget)
    layers = "re:.*layers\\.\\d+$" if "llama" in type(model).__name__.lower() else "re:.*h\\.\\d+$"
    kind = SparseGPTModifier if method == "llmc-sparsegpt" else WandaPruningModifier
    recipe = kind(sparsity=sparsity, mask_structure=nm, targets=[layers], ignore=["lm_head"])
    import transformers   # the ids are given; oneshot only wants some processor to exist
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=CALIB,
            max_seq_length=SEQ, processor=transformers.ByT5Tokenizer())
    return model


def run_all(family: str, seed: int, methods, budgets) -> None:
    out = RESULTS / f"{family}-s{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text()) if out.is_file() else {"cells": []}
    have = {(c["method"], c["budget"]) for c in done["cells"]}
    if "dense" not in done:
        done["dense"] = json.loads((folder(family, seed) / "prunewise-train.json").read_text())
    llmc_py = os.environ.get("LLMC_PYTHON")
    for budget in budgets:
        first = budget == budgets[0] and not budget.startswith("s")
        for method in (["dense"] if first else []) + list(methods):
            if (method, budget) in have or (method.startswith("llmc-") and not llmc_py):
                continue
            py = llmc_py if method.startswith("llmc-") else sys.executable
            env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
            r = subprocess.run([py, __file__, "cell", "--family", family, "--seed", str(seed),
                                "--method", method, "--budget", budget], capture_output=True,
                               text=True, env=env)
            lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
            if r.returncode or not lines:
                print(f"{method} {budget}: failed\n{r.stderr[-2000:]}", flush=True)
                continue
            got = json.loads(lines[-1])
            done["cells"].append(got)
            out.write_text(json.dumps(done, indent=1))
            print(f"{method:18s} {budget:4s} ppl {got['perplexity']:.3f} "
                  f"{got['seconds']:.1f}s peak {got['peak_rss_mb']:.0f} MB", flush=True)


def _status(key: str) -> float:
    """A line of /proc/self/status in MB (VmRSS: now; VmHWM: the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def depth() -> None:
    """SparseGPT's time and memory on 2, 4, 8 and 16 random layers of the same width: each
    model is built and saved by one process, then loaded and pruned by a fresh one, which
    reports its resident memory before pruning and its peak during it."""
    import transformers

    from prunewise import hf, tasks
    from prunewise.pipeline import runs
    if len(sys.argv) > 2 and sys.argv[2] in ("--build", "--one"):
        layers = int(sys.argv[3])
        path = Path(f"/tmp/prunewise-depth-{layers}")
        if sys.argv[2] == "--build":
            torch.manual_seed(0)
            transformers.AutoModelForCausalLM.from_config(config("llama", layers)).save_pretrained(
                str(path))
            return
        b = bundle()
        model = hf.load(path)
        weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
        now, high = _status("VmRSS"), _status("VmHWM")
        t0 = time.perf_counter()
        runs.prune_masks(model, b, "sparsegpt", runs.Unstructured(0.5, samples=CALIB,
                                                                   batch_size=16,
                                                                   track_accuracy=False),
                         task=tasks.causal_lm())
        print(json.dumps({"layers": layers, "seconds": time.perf_counter() - t0,
                          "weights_mb": weights_mb, "rss_before_mb": now,
                          "peak_before_mb": high, "peak_rss_mb": _status("VmHWM")}))
        return
    out = {}
    for layers in (2, 4, 8, 16):
        subprocess.run([sys.executable, __file__, "depth", "--build", str(layers)], check=True,
                       capture_output=True)
        r = subprocess.run([sys.executable, __file__, "depth", "--one", str(layers)],
                           capture_output=True, text=True)
        got = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
        got["added_mb"] = got["peak_rss_mb"] - got["rss_before_mb"]
        out[layers] = got
        print(got, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "depth.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    if sys.argv[1:2] == ["depth"]:
        return depth()
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "cell", "run"])
    p.add_argument("--family", choices=["llama", "gpt2"], default="llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--budget", default="0.5")
    p.add_argument("--methods", default=",".join(METHODS + LLMC))
    p.add_argument("--budgets", default=",".join(BUDGETS))
    p.add_argument("--structured", action="store_true",
                   help="run the structured cells (STRUCTURED_METHODS at STRUCTURED budgets)")
    a = p.parse_args()
    if a.what == "train":
        train_base(a.family, a.seed, a.epochs)
    elif a.what == "cell":
        print(json.dumps(cell(a.family, a.seed, a.method, a.budget)))
    else:
        if a.structured:
            run_all(a.family, a.seed, STRUCTURED_METHODS, STRUCTURED)
        else:
            run_all(a.family, a.seed, a.methods.split(","), a.budgets.split(","))


if __name__ == "__main__":
    main()
