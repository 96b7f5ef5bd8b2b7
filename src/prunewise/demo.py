"""`prunewise demo`: the whole pipeline on the embedded digits data, in a few minutes on a CPU.

Train resnet20 on digits and measure it; then prune it twice, each time next to the baseline
users compare against, before and after a short fine-tune:
- unstructured: FVW vs. global magnitude at 90% sparsity (masks);
- structured: SLIMING vs. L1-uniform at 50% of the MACs (a physically smaller model).
Everything lands in ``OUT/``: ``report.json`` / ``report.md`` / plots, the dense checkpoint
(``dense/``), the two mask plans (``fvw/``, ``magnitude/``) and the SLIMING model (``sliming/``).
The demo's settings trade fidelity for time; each step's report says which it used.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import data as D
from . import files, measure, models, train
from . import report as report_mod

DEMO_MODEL = "resnet20"
DEMO_EPOCHS = 20

FVW_SPARSITY = 0.9
FVW_KEEP = 0.9          # 22 iterations to 90% (the reference's 0.98 would take 114)
FVW_SAMPLES = 512       # attribution samples from the training split
FINETUNE_EPOCHS = 15    # the same short fine-tune for every pruned model
FINETUNE_LR = 0.05

SLIMING_MACS = 0.5


def run_demo(out: str | Path = "runs/demo", *, epochs: int | None = None, seed: int = 0,
             quiet: bool = False, quick: bool = False) -> dict:
    """Run the demo and return its report (also written to ``out/report.json``).

    ``quick`` shrinks every step (2 training epochs, 1 fine-tune epoch, 128 attribution
    samples) to check the wiring in seconds; its accuracies mean nothing.
    """
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    bundle = D.load("digits", seed=seed)
    model = models.create(DEMO_MODEL, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    epochs = (2 if quick else DEMO_EPOCHS) if epochs is None else epochs
    hist = train.fit(model, bundle, epochs=epochs, seed=seed, progress=not quiet,
                     desc=f"train {DEMO_MODEL} on digits")
    test = train.evaluate_split(model, bundle, "test")
    x = torch.zeros(1, bundle.in_channels, bundle.image_size, bundle.image_size)
    stats = measure.summary(model, x)
    data_meta = {"name": "digits", "root": None, "image_size": bundle.image_size, "seed": seed}
    files.save_model(model, out / "dense", meta={"data": data_meta, "seed": seed,
                                                 "test_accuracy": test["top1"]})
    report = {
        "model": DEMO_MODEL, "data": "digits", "seed": seed, "epochs": epochs,
        "test_accuracy": test["top1"], "test_top5": test["top5"],
        "params": stats["params"], "macs": stats["macs"], "latency_ms": stats["latency_ms"],
        "train_seconds": hist["seconds"], "best_epoch": hist["best_epoch"],
        "checkpoint": str(out / "dense"), "runs": {},
    }
    ctx = {"out": out, "bundle": bundle, "model": model, "example": x, "seed": seed,
           "quiet": quiet, "quick": quick, "data_meta": data_meta, "dense_accuracy": test["top1"]}
    fvw_step(report["runs"], ctx)
    sliming_step(report["runs"], ctx)
    report["seconds"] = time.perf_counter() - start
    config = {"model": DEMO_MODEL, "data": "digits", "epochs": epochs, "seed": seed,
              "quick": quick, "fvw": {"sparsity": FVW_SPARSITY, "keep": FVW_KEEP,
                                      "samples": 128 if quick else FVW_SAMPLES},
              "sliming": {"macs": SLIMING_MACS},
              "finetune": {"epochs": 1 if quick else FINETUNE_EPOCHS, "lr": FINETUNE_LR}}
    return report_mod.write(out, report, kind="demo", config=config)


def fvw_step(runs: dict, ctx: dict) -> None:
    """Unstructured: FVW next to global magnitude at 90% sparsity, before/after a fine-tune.

    Demo settings: ``keep=0.9`` per iteration instead of the reference's 0.98, 512 attribution
    samples, 15 fine-tune epochs.
    """
    from . import baselines, fvw

    bundle, model, seed, quiet = ctx["bundle"], ctx["model"], ctx["seed"], ctx["quiet"]
    samples = 128 if ctx["quick"] else FVW_SAMPLES
    ft_epochs = 1 if ctx["quick"] else FINETUNE_EPOCHS

    def attribution():
        return D.batches(bundle.train, bundle, 128, shuffle=True, seed=seed, limit=samples)

    for name, method in (("fvw", fvw.prune), ("magnitude", baselines.magnitude)):
        start = time.perf_counter()
        plan = method(model, attribution, sparsity=FVW_SPARSITY, keep=FVW_KEEP, seed=seed,
                      eval_batches=lambda: D.batches(bundle.val, bundle, 256), progress=not quiet)
        prune_s = time.perf_counter() - start
        pruned = plan.apply(model)
        before = train.evaluate_split(pruned, bundle, "test")["top1"]
        hist = train.fit(pruned, bundle, epochs=ft_epochs, lr=FINETUNE_LR, masks=plan.masks,
                         seed=seed, progress=not quiet, desc=f"fine-tune {name}")
        after = train.evaluate_split(pruned, bundle, "test")["top1"]
        plan.save(ctx["out"] / name)
        runs[name] = {
            "method": name, "sparsity": plan.sparsity, "keep": FVW_KEEP,
            "iterations": plan.meta["iterations"], "samples": samples if name == "fvw" else None,
            "test_accuracy": before, "finetuned_accuracy": after, "finetune_epochs": ft_epochs,
            "finetuned_sparsity": measure.sparsity(pruned, list(plan.masks))["global"],
            "prune_seconds": prune_s, "finetune_seconds": hist["seconds"],
            "seconds": time.perf_counter() - start, "plan": str(ctx["out"] / name),
            "history": plan.meta["history"],
            "layers": [{"layer": k, "sparsity": v} for k, v in plan.per_layer().items()],
            "note": f"demo settings: keep {FVW_KEEP} per iteration (reference 0.98), "
                    f"{samples} attribution samples, {ft_epochs} fine-tune epochs at lr {FINETUNE_LR}"}


def sliming_step(runs: dict, ctx: dict) -> None:
    """Structured: SLIMING and L1-uniform at 50% MACs, each before and after a short fine-tune;
    the SLIMING model is saved to ``out/sliming``."""
    from .sliming import one_thread, pipeline

    ft_epochs = 1 if ctx["quick"] else FINETUNE_EPOCHS
    for key, method in (("sliming", "sliming"), ("l1_uniform", "l1")):
        with one_thread():  # small convs on a 2-core CPU: one thread is faster and steadier
            pruned, plan, rep = pipeline.run(
                ctx["model"], ctx["bundle"], method, macs=SLIMING_MACS,
                finetune_epochs=ft_epochs, lr=FINETUNE_LR, seed=ctx["seed"], quiet=ctx["quiet"],
                dense_accuracy=ctx["dense_accuracy"])
        rep.pop("groups", None)
        if key == "sliming":
            rep["spectra"] = {k: v.tolist() for k, v in plan.spectra.items()}
            rep["checkpoint"] = str(files.save_model(pruned, Path(ctx["out"]) / "sliming", meta={
                "data": ctx["data_meta"], "pruned": {"method": method, "macs": SLIMING_MACS},
                "test_accuracy": rep.get("finetuned_accuracy", rep["test_accuracy"])}))
        runs[key] = rep
