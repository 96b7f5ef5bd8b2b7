"""The `prunewise` command: a thin shell over the library functions a Python user calls.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal failure.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path

import click
import torch

from . import data as D
from . import device, dist, files, measure, models, runs, schema, train
from . import report as report_mod
from .errors import PrunewiseError

quiet_option = click.option("--quiet", is_flag=True, help="No progress bars or chatter.")


# ---- checking options before any work ----
class FiniteFloat(click.ParamType):
    """A click FLOAT that refuses NaN and infinities and, optionally, values outside a range
    (``min_open`` / ``max_open``: the bound itself is excluded)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        lo = "" if self.min is None else f"{self.min:g} {'<' if self.min_open else '<='} "
        hi = "" if self.max is None else f" {'<' if self.max_open else '<='} {self.max:g}"
        return f"{lo}x{hi}"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, bool) or not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.min is not None and (v < self.min or (self.min_open and v == self.min))
        high = self.max is not None and (v > self.max or (self.max_open and v == self.max))
        if low or high:
            self.fail(f"{value!r} is not in the range {self.describe()}", param, ctx)
        return v


MAX_COUNT = 10 ** 9
SEED = click.IntRange(0, 2 ** 32 - 1)
SIDE = click.IntRange(1, schema.MAX_IMAGE_SIZE)
CLASSES = click.IntRange(1, schema.MAX_CLASSES)
LR = FiniteFloat(0, 10, min_open=True)
WEIGHT_DECAY = FiniteFloat(0, 1)
FRACTION = FiniteFloat(0, 1, min_open=True, max_open=True)


def count(low: int) -> click.IntRange:
    """An integer option in ``low .. MAX_COUNT``."""
    return click.IntRange(low, MAX_COUNT)


def check_output(path, what: str = "--out", *, folder: bool = True) -> Path:
    """Refuse, before any work, an output path that cannot be written: empty, an existing file
    where a folder is wanted (or the reverse), under a file, or where we may not write."""
    text = "" if path is None else str(path)
    kind = "folder" if folder else "file"
    if not text.strip() or "\0" in text:
        raise PrunewiseError(f"{what} must name a {kind}, got {text!r}")
    p = Path(text)
    if p.exists() and p.is_dir() != folder:
        raise PrunewiseError(f"{what} {p} is {'a file' if folder else 'a folder'}; give a {kind}")
    at = p if (folder and p.is_dir()) else p.parent
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        raise PrunewiseError(f"{what} {p} lies under {at}, which is not a folder")
    if not os.access(at, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PrunewiseError(f"{what} {p} is not writable (no write permission on {at})")
    return p


def check_apart(out, checkpoint) -> None:
    """Refuse a prune ``--out`` whose ``model`` folder is the input checkpoint: the run would
    write the pruned model over the only copy of the model it started from."""
    target, source = Path(out) / "model", Path(checkpoint)
    if source.exists() and target.exists() and target.resolve() == source.resolve():
        raise PrunewiseError(f"--out {out} would write the pruned model over the input checkpoint "
                             f"{checkpoint}; choose another --out folder")


def check_batch(bundle: D.DataBundle, batch_size: int, what: str) -> None:
    """Training uses full batches only: one larger than the training split takes no step."""
    if batch_size > len(bundle.train):
        raise PrunewiseError(f"{what} {batch_size} is larger than the {len(bundle.train)} "
                             f"training images of '{bundle.name}': no step would be taken")


def check_model_name(name: str) -> None:
    if name not in models.names():
        raise PrunewiseError(f"unknown model '{name}'; choose one of: {', '.join(models.names())}")


def device_option(f):
    """--device, on every command that computes."""
    return click.option("--device", "device_name", default="auto", show_default=True,
                        help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")(f)


def amp_option(f):
    """--amp, on every command that trains or fine-tunes."""
    return click.option("--amp", type=click.Choice(device.AMP), default=None,
                        help="Mixed-precision training / fine-tuning on CUDA (fp16 with a "
                             "gradient scaler); pruning criteria stay float32.")(f)


def compute_of(device_name: str, amp: str | None = None) -> runs.Compute:
    """Resolve --device / --amp, join the torchrun process group when launched by torchrun,
    and silence the standard output of every rank but 0 (one copy of every printed line)."""
    dev = device.resolve(device_name)
    device.check_amp(amp, dev)
    if dist.init(dev) and not dist.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of the process
    return runs.Compute(device=str(dev), amp=amp)


def data_options(f):
    """--data/--root/--image-size/--data-seed, shared by every command that reads data."""
    f = click.option("--data-seed", type=SEED, default=None,
                     help="Seed of the train/val split (default: the checkpoint's, else 0).")(f)
    f = click.option("--image-size", type=SIDE, default=None,
                     help="Resize images to this side (default: the data set's own).")(f)
    f = click.option("--root", type=click.Path(file_okay=False), default=None,
                     help="Folder of a local data set (cifar10, cifar100, imagefolder, mnist; fashion-mnist defaults to /usr/share/datasets/fashion-mnist).")(f)
    f = click.option("--data", "data_name", default=None,
                     help=f"Data set: {', '.join(D.DATASETS)} (default: the checkpoint's, else digits).")(f)
    return f


def say(quiet: bool, msg: str) -> None:
    if not quiet and dist.is_main():
        click.echo(msg, err=True)


def load_data(data_name, root, image_size, data_seed, meta: dict | None = None) -> D.DataBundle:
    """The data bundle named on the command line, defaulting to what a checkpoint was trained on."""
    used = (meta or {}).get("data", {})
    name = data_name or used.get("name", "digits")
    same = name == used.get("name")
    return D.load(name, root or (used.get("root") if same else None),
                  image_size=image_size or (used.get("image_size") if same else None),
                  seed=data_seed if data_seed is not None else (used.get("seed", 0) if same else 0))


def data_meta(bundle: D.DataBundle, root, seed: int) -> dict:
    return {"name": bundle.name, "root": str(root) if root else None,
            "image_size": bundle.image_size, "seed": seed}


def check_classes(model: torch.nn.Module, bundle: D.DataBundle) -> None:
    n = model.prunewise_config["num_classes"]
    if n != bundle.num_classes:
        raise PrunewiseError(f"model has num_classes={n} but data set '{bundle.name}' has "
                             f"{bundle.num_classes} classes; they must match")
    c = model.prunewise_config["in_channels"]
    if c != bundle.in_channels:
        raise PrunewiseError(f"model has in_channels={c} but data set '{bundle.name}' has "
                             f"{bundle.in_channels} channels; they must match")


def load_checkpoint(checkpoint, data_name, root, image_size, data_seed):
    """A checkpoint's model and the data it is used with (by default, what it was trained on)."""
    model = files.load_model(checkpoint)
    bundle = load_data(data_name, root, image_size, data_seed, model.prunewise_meta)
    check_classes(model, bundle)
    return model, bundle


def example_input(model: torch.nn.Module, size: int) -> torch.Tensor:
    return torch.zeros(1, model.prunewise_config["in_channels"], size, size)


def emit(obj: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=files.jsonable))
    else:
        for k, v in obj.items():
            if not isinstance(v, (list, dict)):
                click.echo(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prunewise")
def cli():
    """prunewise: FVW (unstructured) and SLIMING (structured) pruning for PyTorch."""


@cli.command("train")
@click.argument("model_name")
@data_options
@click.option("--epochs", type=count(1), default=30, show_default=True)
@click.option("--lr", type=LR, default=0.05, show_default=True)
@click.option("--batch-size", type=count(1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(train.OPTIMIZERS), default="sgd", show_default=True)
@click.option("--weight-decay", type=WEIGHT_DECAY, default=5e-4, show_default=True)
@click.option("--num-classes", type=CLASSES, default=None, help="Must match the data (default: the data's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="Checkpoint folder to write.")
@device_option
@amp_option
@quiet_option
def train_cmd(model_name, data_name, root, image_size, data_seed, epochs, lr, batch_size,
              optimizer, weight_decay, num_classes, seed, out, quiet, device_name, amp):
    """Train a zoo model and save the best-on-validation checkpoint to OUT."""
    check_output(out)
    check_model_name(model_name)
    compute = compute_of(device_name, amp)
    bundle = load_data(data_name, root, image_size, data_seed)
    check_batch(bundle, batch_size, "--batch-size")
    if num_classes is not None and num_classes != bundle.num_classes:
        raise PrunewiseError(f"--num-classes {num_classes} does not match data set "
                             f"'{bundle.name}', which has {bundle.num_classes} classes")
    torch.manual_seed(seed)
    model = compute.place(models.create(model_name, num_classes=bundle.num_classes,
                                        in_channels=bundle.in_channels))
    hist = train.fit(model, bundle, epochs=epochs, lr=lr, batch_size=batch_size,
                     optimizer=optimizer, weight_decay=weight_decay, seed=seed,
                     progress=progress_on(quiet), desc=f"train {model_name}", amp=amp)
    test = train.evaluate_split(model, bundle, "test")
    meta = {"data": data_meta(bundle, root, data_seed or 0), "seed": seed,
            "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                      "weight_decay": weight_decay, "best_epoch": hist["best_epoch"],
                      "best_val_top1": hist["best_val_top1"], "seconds": hist["seconds"]},
            "test_accuracy": test["top1"]}
    files.save_model(model, out, meta=meta)
    files.write_json(Path(out) / "train_history.json", hist["history"])
    say(quiet, f"saved {out}: test top-1 {test['top1']:.4f} (best val epoch {hist['best_epoch']})")


@cli.command("eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@device_option
def eval_cmd(checkpoint, data_name, root, image_size, data_seed, split, as_json, device_name):
    """Evaluate a checkpoint: top-1, top-5, loss."""
    compute = compute_of(device_name)
    model, bundle = load_checkpoint(checkpoint, data_name, root, image_size, data_seed)
    model = compute.place(model)
    emit({"data": bundle.name, "split": split, **train.evaluate_split(model, bundle, split)}, as_json)


@cli.command("info")
@click.argument("name")
@click.option("--num-classes", type=CLASSES, default=10, show_default=True)
@click.option("--in-channels", type=click.IntRange(1, schema.MAX_IN_CHANNELS), default=3,
              show_default=True)
@click.option("--input-size", type=SIDE, default=None, help="Input side (default: the model's natural one).")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(name, num_classes, in_channels, input_size, as_json):
    """Params, MACs and a layer table of a zoo model NAME or a checkpoint folder."""
    if Path(name).is_dir():
        model = files.load_model(name)
        size = input_size or model.prunewise_meta.get("data", {}).get("image_size") \
            or models.input_size(model.prunewise_config["arch"])
    else:
        model = models.create(name, num_classes=num_classes, in_channels=in_channels)
        size = input_size or models.input_size(name)
    if size < 1:
        raise PrunewiseError(f"--input-size must be >= 1, got {size}")
    x = example_input(model, size)
    try:
        table = measure.layer_table(model, x)
    except RuntimeError as e:
        raise PrunewiseError(f"input size {size} is too small for '{model.prunewise_config['arch']}':"
                             f" {str(e).splitlines()[0]}") from None
    info = {"model": model.prunewise_config["arch"], "input_size": size,
            "params": measure.params(model), "macs": sum(r["macs"] for r in table),
            "nonzero_params": measure.params(model, nonzero=True), "layers": table}
    if as_json:
        emit(info, True)
        return
    click.echo(f"{info['model']}  input {model.prunewise_config['in_channels']}x{size}x{size}  "
               f"params {info['params']:,}  MACs {info['macs']:,}")
    click.echo(f"{'layer':<40} {'type':<8} {'weight':<20} {'output':<16} {'params':>10} {'MACs':>14}")
    for r in table:
        click.echo(f"{r['name']:<40} {r['type']:<8} {'x'.join(map(str, r['weight_shape'])):<20} "
                   f"{'x'.join(map(str, r['output_shape'])):<16} {r['params']:>10,} {r['macs']:>14,}")


@cli.group("prune")
def prune_group():
    """Prune a checkpoint: `prune fvw` (unstructured) or `prune sliming` (structured)."""


def finetune_options(epochs: int = 0, lr: float = 0.01):
    """Fine-tuning after pruning (every prune command, bench)."""
    return lambda f: _add_finetune_options(f, epochs, lr)


def _add_finetune_options(f, epochs: int, lr: float):
    for opt in reversed([
            click.option("--finetune-epochs", type=count(0), default=epochs, show_default=True),
            click.option("--lr", type=LR, default=lr, show_default=True,
                         help="Fine-tuning learning rate."),
            click.option("--optimizer", type=click.Choice(train.OPTIMIZERS), default="sgd",
                         show_default=True, help="Fine-tuning optimizer."),
            click.option("--weight-decay", type=WEIGHT_DECAY, default=5e-4, show_default=True),
            click.option("--finetune-batch-size", type=count(1), default=64, show_default=True),
            click.option("--patience", type=count(1), default=None,
                         help="Fine-tuning early-stopping patience (epochs).")]):
        f = opt(f)
    return f


def recalibration_options(f):
    """BatchNorm recalibration after pruning (every prune command, the demo and bench)."""
    f = click.option("--no-recalibrate", is_flag=True,
                     help="Skip BatchNorm recalibration after pruning.")(f)
    return click.option("--recalibrate-samples", type=int, default=512, show_default=True,
                        help="Training images that re-estimate the BatchNorm statistics "
                             "after pruning.")(f)


def latency_option(f):
    return click.option("--latency-repeats", type=count(0), default=20, show_default=True,
                        help="Timed CPU forward passes per batch size (1 and 64) for the dense "
                             "and the pruned model; 0 = no latency.")(f)


def measurement_of(kw: dict) -> runs.Measurement:
    n = kw["latency_repeats"]
    if n < 0:
        raise PrunewiseError(f"--latency-repeats must be >= 0, got {n}")
    return runs.Measurement(latency=n > 0, repeats=max(n, 1), warmup=min(3, max(n, 1)))


def loop_recalibrate_option(f):
    return click.option("--loop-recalibrate/--no-loop-recalibrate", default=None,
                        help="Recalibrate BatchNorm inside the iterative pruning loop "
                             "(default: on for fvw and obd; --no-loop-recalibrate is "
                             "the reference FVW).")(f)


def finetune_of(kw: dict) -> runs.FineTune:
    return runs.FineTune(epochs=kw["finetune_epochs"], lr=kw["lr"], optimizer=kw["optimizer"],
                         weight_decay=kw["weight_decay"], batch_size=kw["finetune_batch_size"],
                         patience=kw["patience"])


def recalibration_of(kw: dict) -> runs.Recalibration:
    return runs.Recalibration(samples=kw["recalibrate_samples"], enabled=not kw["no_recalibrate"])


def prune_setup(checkpoint, data: tuple, device_name: str, amp, kw: dict):
    """What both prune commands do once their method settings are checked: check the shared
    options, place the run, load the checkpoint and its data. Returns (model, bundle, the
    keyword arguments of the steps after pruning: finetune, recalibration, measurement,
    compute)."""
    finetune, recalibration = finetune_of(kw), recalibration_of(kw)
    measurement = measurement_of(kw)
    finetune.check()
    recalibration.check()
    compute = compute_of(device_name, amp)
    model, bundle = load_checkpoint(checkpoint, *data)
    if finetune.epochs:
        check_batch(bundle, finetune.batch_size, "--finetune-batch-size")
    return model, bundle, dict(finetune=finetune, recalibration=recalibration,
                               measurement=measurement, compute=compute)


def progress_on(quiet: bool) -> bool:
    """Progress bars only on a terminal: in a log every bar update would be a line."""
    return not quiet and sys.stderr.isatty()


def accuracy_line(rep: dict) -> str:
    """'top-1 0.1000 pruned -> 0.5000 recalibrated -> 0.9000 fine-tuned (dense 0.9500)'."""
    acc = rep["accuracy"]
    steps = [f"{acc[s]['test']:.4f} {name}" for s, name in
             (("pruned", "pruned"), ("recalibrated", "recalibrated"), ("finetuned", "fine-tuned"))
             if acc.get(s)]
    return f"test top-1 {' -> '.join(steps)} (dense {acc['dense']['test']:.4f})"


def format_layers(rows: list[dict]) -> str:
    """The structured layer table: output and input widths before and after."""
    lines = [f"{'layer':<36} {'out before':>10} {'out after':>10} {'in before':>10} {'in after':>10}"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"{r['layer']:<36} {b[0]:>10} {a[0]:>10} {b[1]:>10} {a[1]:>10}")
    return "\n".join(lines)


def save_run(out, model, pruned, plan, rep: dict, checkpoint, quiet: bool) -> None:
    """Write a prune command's plan, model and report; print where they went."""
    rep["checkpoint"] = str(checkpoint)
    runs.save(out, pruned, plan, rep, meta=model.prunewise_meta)
    written = report_mod.write(out, rep, kind=rep["kind"])
    say(quiet, f"wrote {Path(out) / 'report.json'}, report.md, {', '.join(written['plots'])}")


UNSTRUCTURED = runs.UNSTRUCTURED


@prune_group.command("fvw")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--sparsity", type=FRACTION, required=True, help="Target global sparsity in (0, 1).")
@click.option("--keep", type=FRACTION, default=0.98, show_default=True,
              help="Fraction of the unpruned weights kept per iteration.")
@click.option("--alpha", type=FiniteFloat(0, min_open=True), default=1e-8, show_default=True,
              help="Attack step size.")
@click.option("--steps", type=click.IntRange(1, 10_000), default=2, show_default=True,
              help="Attack steps K.")
@click.option("--samples", type=count(0), default=2048, show_default=True,
              help="Attribution samples from the training split (0 = all).")
@click.option("--class-groups", type=CLASSES, default=None,
              help="Class-group mode with this many groups (FVW only).")
@click.option("--aggregate", type=click.Choice(["union", "sum"]), default="union", show_default=True)
@click.option("--descent", is_flag=True, help="Class-group mode: add a descent pass per group.")
@click.option("--method", type=click.Choice(UNSTRUCTURED), default="fvw", show_default=True)
@click.option("--batch-size", type=count(1), default=128, show_default=True,
              help="Attribution batch size.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave the layers whose module name matches PATTERN dense (repeatable; "
                   "e.g. fc or 'layer3.*'); --sparsity is then that of the other layers.")
@finetune_options()
@recalibration_options
@loop_recalibrate_option
@latency_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="Folder for the plan and report.")
@device_option
@amp_option
@quiet_option
def prune_fvw_cmd(checkpoint, data_name, root, image_size, data_seed, sparsity, keep, alpha, steps,
                  samples, class_groups, aggregate, descent, method, batch_size, exclude, seed, out,
                  quiet, loop_recalibrate, device_name, amp, **kw):
    """Unstructured pruning of CHECKPOINT to --sparsity with FVW (or a baseline --method).

    Writes OUT/masks.safetensors + OUT/plan.json (the plan), OUT/model (the masked, recalibrated
    and optionally fine-tuned checkpoint) and OUT/report.json. Re-running after an interruption
    resumes the pruning from OUT/resume.
    """
    check_output(out)
    check_apart(out, checkpoint)
    if samples < 0:
        raise PrunewiseError(f"--samples must be >= 0 (0 = all), got {samples}")
    settings = runs.Unstructured(sparsity=sparsity, keep=keep, samples=samples or None,
                                 batch_size=batch_size, alpha=alpha, steps=steps,
                                 class_groups=class_groups, aggregate=aggregate, descent=descent,
                                 loop_recalibrate=loop_recalibrate, exclude=tuple(exclude))
    runs.check_unstructured(method, settings)
    model, bundle, steps_kw = prune_setup(checkpoint, (data_name, root, image_size, data_seed),
                                          device_name, amp, kw)
    pruned, plan, rep = runs.run_unstructured(
        model, bundle, method, settings, seed=seed, progress=progress_on(quiet),
        resume_dir=Path(out) / "resume", **steps_kw)
    click.echo(f"{method}: sparsity {rep['sparsity']:.4f}, nonzero params "
               f"{rep['params']['pruned']:,}, {accuracy_line(rep)}")
    save_run(out, model, pruned, plan, rep, checkpoint, quiet)


@prune_group.command("sliming")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--macs", type=FiniteFloat(), default=None,
              help="Keep this fraction of the MACs, in (0, 1).")
@click.option("--params", type=FiniteFloat(), default=None,
              help="Keep this fraction of the params, in (0, 1).")
@click.option("--normalize", type=click.Choice(["max", "sum"]), default="max", show_default=True)
@click.option("--min-channels", type=count(1), default=1, show_default=True)
@click.option("--min-ratio", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True,
              help="Keep at least this fraction of every group (0 = the paper's configuration).")
@click.option("--method", type=click.Choice(runs.STRUCTURED), default="sliming", show_default=True,
              help="SLIMING or a baseline at the same budget.")
@finetune_options()
@recalibration_options
@latency_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--plan", "plan_dir", type=click.Path(), default=None,
              help="Apply a saved channel plan (OUT/plan of an earlier run) instead of a budget.")
@click.option("--out", type=click.Path(), required=True, help="Folder for the pruned model and report.")
@device_option
@amp_option
@quiet_option
def prune_sliming_cmd(checkpoint, data_name, root, image_size, data_seed, macs, params, normalize,
                      min_channels, min_ratio, method, seed, plan_dir, out, quiet, device_name,
                      amp, **kw):
    """SLIMING (or a structured baseline) pruning of CHECKPOINT into a physically smaller model.

    Writes OUT/model (the smaller, recalibrated and optionally fine-tuned checkpoint), OUT/plan
    (the channel plan) and OUT/report.json.
    """
    check_output(out)
    check_apart(out, checkpoint)
    settings = runs.Structured(macs=macs, params=params, normalize=normalize,
                               min_channels=min_channels, min_ratio=min_ratio, plan=plan_dir)
    runs.check_structured(method, settings)
    model, bundle, steps_kw = prune_setup(checkpoint, (data_name, root, image_size, data_seed),
                                          device_name, amp, kw)
    pruned, plan, rep = runs.run_structured(model, bundle, method, settings, seed=seed,
                                            progress=progress_on(quiet), **steps_kw)
    click.echo(format_layers(rep["layers"]))
    speed = (rep["latency_ms"] or {}).get("64", {}).get("speedup")
    click.echo(f"{rep['method']}: MACs {rep['macs']['pruned']:,} ({rep['macs']['ratio']:.4f} of "
               f"dense), params {rep['params']['pruned']:,} ({rep['params']['ratio']:.4f}), "
               + (f"CPU speed-up x{speed:.2f} at batch 64, " if speed else "")
               + accuracy_line(rep))
    save_run(out, model, pruned, plan, rep, checkpoint, quiet)


@cli.group("toy")
def toy_group():
    """Toy problems from the papers: `toy svgg` (SLIMING's redundant-filter toy)."""


@toy_group.command("svgg")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-complete", is_flag=True, help="Skip the complete search on the reduced SVGG.")
@click.option("--json", "as_json", is_flag=True)
def toy_svgg_cmd(seed, no_complete, as_json):
    """SVGG: selection accuracy per layer (GEM, random, one-shot) and the recovered config."""
    from .sliming import one_thread, toy

    with one_thread():
        res = toy.run(seed, complete=not no_complete)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"SVGG seed {seed}: C = {res['channels']}, true N = {res['true_config']}")
    for key in ("gem", "random", "one_shot"):
        click.echo(f"{key:>10}: " + " ".join(f"{a:.3f}" for a in res[key])
                   + f"   all {res[key + '_total']:.3f}")
    click.echo(f"{'config':>10}: {res['config']} (error {res['config_error']})")
    if "complete_search" in res:
        cs = res["complete_search"]
        click.echo(f"reduced SVGG C = {cs['channels']}: complete {cs['complete']}, gem {cs['gem']}")



# ---- reports, comparison grid, export ----
@cli.command("bench")
@click.option("--model", "model_name", default="resnet20", show_default=True)
@click.option("--data", "data_name", default="digits", show_default=True,
              help=f"Data set: {', '.join(D.DATASETS)}.")
@click.option("--root", type=click.Path(file_okay=False), default=None)
@click.option("--methods", default=None,
              help="Comma list (default: fvw,magnitude,taylor,random with --sparsity; "
                   "sliming,l1,random,chip,sliming-l1 with --macs).")
@click.option("--sparsity", "sparsities", default=None,
              help="Comma list of target sparsities (unstructured grid; default 0.8,0.9,0.95).")
@click.option("--macs", "macs_list", default=None,
              help="Comma list of MACs fractions to keep (structured grid), e.g. 0.5,0.25.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--base", default=None,
              help="Reuse base checkpoints: a folder holding seed-S/ checkpoint folders, or a "
                   "path pattern with {seed} (default: train them into OUT/base).")
@click.option("--epochs", type=count(1), default=20, show_default=True,
              help="Base model training epochs (without --base).")
@click.option("--keep", type=FRACTION, default=0.9, show_default=True,
              help="Unstructured: fraction kept per iteration (the papers' 0.98 is slower).")
@click.option("--samples", type=count(0), default=512, show_default=True,
              help="Unstructured: attribution samples (0 = all).")
@finetune_options(epochs=5, lr=0.05)
@recalibration_options
@loop_recalibrate_option
@latency_option
@click.option("--out", type=click.Path(), default="runs/bench", show_default=True)
@device_option
@amp_option
@quiet_option
def bench_cmd(model_name, data_name, root, methods, sparsities, macs_list, seeds, base, epochs,
              keep, samples, loop_recalibrate, out, quiet, device_name, amp, **kw):
    """Compare methods over budgets and seeds: OUT/grid.{md,csv,json,png}; resumable.

    Every cell records the test top-1 pruned, after BatchNorm recalibration and after
    fine-tuning (defaults here: 5 epochs at lr 0.05).
    """
    from . import bench

    check_output(out)
    if sparsities is not None and macs_list is not None:
        raise PrunewiseError("give --sparsity (unstructured grid) or --macs (structured grid), not both")
    if samples < 0:
        raise PrunewiseError(f"--samples must be >= 0 (0 = all), got {samples}")
    structured = macs_list is not None
    default = "0.8,0.9,0.95" if sparsities is None else sparsities
    budgets = bench.parse_list(macs_list if structured else default,
                               "--macs" if structured else "--sparsity")
    method_list = bench.parse_list(methods, "--methods", str) if methods is not None \
        else list(bench.STRUCTURED if structured else bench.UNSTRUCTURED)
    grid = bench.Grid(methods=tuple(method_list), budgets=tuple(budgets),
                      seeds=tuple(bench.parse_list(seeds, "--seeds", int)), structured=structured,
                      model_name=model_name, data_name=data_name, root=root, epochs=epochs,
                      base=base)
    prune = runs.Unstructured(sparsity=0.0, keep=keep, samples=samples or None,
                              loop_recalibrate=loop_recalibrate)
    summary = bench.run(out, grid, prune=prune, finetune=finetune_of(kw),
                        recalibration=recalibration_of(kw), measurement=measurement_of(kw),
                        progress=progress_on(quiet), log=lambda line: say(quiet, line),
                        compute=compute_of(device_name, amp))
    click.echo(bench.grid_markdown(summary), nl=False)
    say(quiet, f"wrote {Path(out) / 'grid.md'}, grid.csv, grid.json, grid.png "
               f"({summary['seconds_this_run']:.1f}s)")


@cli.command("report")
@click.argument("folder", type=click.Path())
def report_cmd(folder):
    """Re-render FOLDER/report.md and the plots from FOLDER/report.json."""
    from . import report

    if Path(folder).is_dir():
        check_output(folder, "report folder")
    rep = report.render(folder)
    click.echo(f"rendered {Path(folder) / 'report.md'} and {len(rep['plots'])} plot(s): "
               + ", ".join(rep["plots"]))


@cli.command("export")
@click.argument("folder", type=click.Path())
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), required=True,
              help="ONNX file to write.")
@click.option("--input-size", type=SIDE, default=None,
              help="Input side (default: the data the model was trained on, else the natural one).")
def export_cmd(folder, onnx_path, input_size):
    """Export a checkpoint (dense, masked or structurally pruned) to ONNX.

    FOLDER is a checkpoint folder or a `prune` output folder (its `model` subfolder is used).
    """
    from . import interop

    check_output(onnx_path, "--onnx", folder=False)
    if Path(onnx_path).suffix.lower() != ".onnx":
        raise PrunewiseError(f"--onnx must name a .onnx file, got {onnx_path!r}")
    folder = Path(folder)
    if (folder / "model" / files.CONFIG).is_file() and not (folder / files.CONFIG).is_file():
        folder = folder / "model"
    model = files.load_model(folder)
    size = input_size or model.prunewise_meta.get("data", {}).get("image_size") \
        or models.input_size(model.prunewise_config["arch"])
    path = interop.export_onnx(model, onnx_path, example_input(model, size))
    click.echo(f"wrote {path} (input 1x{model.prunewise_config['in_channels']}x{size}x{size}, "
               f"dynamic batch)")


@cli.command("demo")
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True)
@click.option("--epochs", type=count(1), default=None, help="Training epochs (default: the demo's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Tiny settings that only check the wiring.")
@recalibration_options
@device_option
@amp_option
@quiet_option
def demo_cmd(out, epochs, seed, quick, quiet, device_name, amp, **kw):
    """Train resnet20 on the embedded digits data, prune it with FVW and SLIMING next to their
    baselines, and write OUT/report.json, report.md and plots."""
    from .demo import run_demo

    check_output(out)
    if epochs is not None and epochs < 1:
        raise PrunewiseError(f"--epochs must be >= 1, got {epochs}")
    recalibration = recalibration_of(kw)
    recalibration.check()
    rep = run_demo(out, epochs=epochs, seed=seed, progress=progress_on(quiet), quick=quick,
                   recalibration=recalibration, compute=compute_of(device_name, amp))
    lat = (rep.get("latency_ms") or {}).get("1", {}).get("dense")
    click.echo(f"dense {rep['model']} on digits: test top-1 {rep['accuracy']['dense']['test']:.4f}"
               f", params {rep['params']['dense']:,}, MACs {rep['macs']['dense']:,}"
               + (f", latency {lat:.2f} ms (batch 1)" if lat is not None else ""))
    for name, step in rep["runs"].items():
        budget = (f"sparsity {step['sparsity']:.3f}" if step["kind"] == "prune-unstructured"
                  else f"MACs x{step['macs']['ratio']:.3f}")
        click.echo(f"{name:>10}: {budget}, {accuracy_line(step)}")
    click.echo(f"wrote {Path(out) / 'report.json'} and report.md in {rep['seconds']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes (2 bad input, 1 internal)."""
    try:
        rv = cli.main(args=argv, prog_name="prunewise", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except (PrunewiseError, click.ClickException) as e:
        msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
        where = f" (rank {dist.rank()} of {dist.world()})" if dist.active() else ""
        click.echo(f"prunewise: error{where}: {' '.join(msg.split())}", err=True)
        code = 2
    except click.exceptions.Abort:
        click.echo("prunewise: aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("prunewise: interrupted", err=True)
        code = 130
    except OSError as e:  # our own paths (unreadable, unwritable, disk full): bad input
        if e.filename is None:
            traceback.print_exc()
            click.echo("prunewise: internal error (please report it with the traceback above)",
                       err=True)
            code = 1
        else:
            click.echo(f"prunewise: error: {e.strerror or e}: {e.filename}", err=True)
            code = 2
    except Exception:  # a genuine internal failure: keep the traceback for the bug report
        traceback.print_exc()
        click.echo("prunewise: internal error (please report it with the traceback above)", err=True)
        code = 1
    if code == 0:
        dist.finish()  # after a failure the peers are stopped by torchrun or the timeout
    return code


def entry() -> None:
    """The ``prunewise`` command and ``python -m prunewise``: exit with :func:`main`'s code
    (under torchrun through :func:`prunewise.dist.leave`, which skips the interpreter shutdown
    that can abort in the collective backend's threads)."""
    code = main()
    dist.leave(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
