"""`prunewise demo`: the whole pipeline on the embedded digits data, in a few minutes on a CPU.

Train resnet20 on digits, measure it, and write ``OUT/report.json`` (and the checkpoint in
``OUT/dense``). Pruning steps extend the same report.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import data as D
from . import files, measure, models, train

DEMO_MODEL = "resnet20"
DEMO_EPOCHS = 20


def run_demo(out: str | Path = "runs/demo", *, epochs: int | None = None, seed: int = 0,
             quiet: bool = False) -> dict:
    """Run the demo and return its report (also written to ``out/report.json``)."""
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    bundle = D.load("digits", seed=seed)
    model = models.create(DEMO_MODEL, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    epochs = DEMO_EPOCHS if epochs is None else epochs
    hist = train.fit(model, bundle, epochs=epochs, seed=seed, progress=not quiet,
                     desc=f"train {DEMO_MODEL} on digits")
    test = train.evaluate_split(model, bundle, "test")
    x = torch.zeros(1, bundle.in_channels, bundle.image_size, bundle.image_size)
    stats = measure.summary(model, x)
    files.save_model(model, out / "dense", meta={
        "data": {"name": "digits", "root": None, "image_size": bundle.image_size, "seed": seed},
        "seed": seed, "test_accuracy": test["top1"]})
    report = {
        "model": DEMO_MODEL, "data": "digits", "seed": seed, "epochs": epochs,
        "test_accuracy": test["top1"], "test_top5": test["top5"],
        "params": stats["params"], "macs": stats["macs"], "latency_ms": stats["latency_ms"],
        "train_seconds": hist["seconds"], "best_epoch": hist["best_epoch"],
        "checkpoint": str(out / "dense"),
    }
    ctx = {"out": out, "bundle": bundle, "model": model, "example": x, "seed": seed,
           "quiet": quiet}
    fvw_step(report, ctx)
    sliming_step(report, ctx)
    report["seconds"] = time.perf_counter() - start
    files.write_json(out / "report.json", report)
    return report


# ---- FVW step (issue 3) ----
def fvw_step(report: dict, ctx: dict) -> None:
    """Unstructured pruning of the demo model (filled in by the FVW work)."""


# ---- SLIMING step (issue 4) ----
def sliming_step(report: dict, ctx: dict) -> None:
    """Structured pruning of the demo model (filled in by the SLIMING work)."""
