"""The commands that are not pruning: train, eval, info, toy, report, export, demo, methods."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from .. import methods, schema, settings as S
from ..errors import PrunewiseError, out_of_memory
from . import loading, output
from .options import (CLASSES, SEED, SIDE, Integer, amp_option, check_output, compute_of, count,
                      holds_out,
                      data_options, device_option, model_option, progress_on, quiet_option,
                      settings_from, settings_options)


@click.command("train")
@click.argument("model_name", required=False)
@data_options
@model_option
@settings_options(S.Training)
@click.option("--num-classes", type=CLASSES, default=None,
              help="Must match the data (default: the data's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="Checkpoint folder to write.")
@device_option
@amp_option
@quiet_option
@holds_out
def train_cmd(model_name, data_name, root, image_size, data_seed, seq_len, factory, num_classes,
              seed, out, quiet, device_name, amp, **kw):
    """Train a zoo model MODEL_NAME (or, with --model, a model of your own) and save the
    best-on-validation checkpoint to OUT.

    Time on 2 CPU cores, resnet20: about 1 s per epoch on digits (30 epochs: 32 s); about 7
    minutes per epoch on Fashion-MNIST at batch 128."""
    import torch

    from .. import checkpoints, files, models, tasks, train

    check_output(out)
    if (Path(out) / checkpoints.CONFIG).exists():   # symbolic links followed
        raise PrunewiseError(f"--out {out} already holds a checkpoint; train writes a new one: "
                             f"choose another folder (or remove that one)")
    how = settings_from(S.Training, kw)
    if how.epochs < 1:
        raise PrunewiseError("--epochs must be at least 1 to train")
    if (model_name is None) == (factory is None):
        raise PrunewiseError("give a zoo MODEL_NAME or --model FILE.py:FACTORY (one of them)")
    if model_name is not None:
        loading.check_model_name(model_name)
    compute = compute_of(device_name, amp)
    model = None
    if factory is not None:   # built first: a language model's text uses its tokenizer
        torch.manual_seed(seed)
        model = checkpoints.built(loading.load_factory(factory))
        model_name = type(model).__name__
    bundle = loading.load_data(data_name, root, image_size, data_seed, seq_len=seq_len,
                               model=model)
    loading.check_batch(bundle, how.batch_size, "--batch-size")
    if num_classes is not None and num_classes != bundle.num_classes:
        raise PrunewiseError(f"--num-classes {num_classes} does not match data set "
                             f"'{bundle.name}', which has {bundle.num_classes} classes")
    if model is not None:
        loading.check_classes(model, bundle)
        model = compute.place(model)
    else:
        torch.manual_seed(seed)
        model = models.create(model_name, num_classes=bundle.num_classes,
                              in_channels=bundle.in_channels)
        loading.check_classes(model, bundle)
        model = compute.place(model)
    task = loading.task_of(bundle)
    hist = train.fit(model, bundle, how, seed=seed, progress=progress_on(quiet),
                     desc=f"train {model_name}", amp=amp, task=task)
    test = train.evaluate_split(model, bundle, "test", task=task)[task.primary]
    meta = {"data": loading.data_meta(bundle, root, data_seed or 0), "seed": seed,
            "train": {**asdict(how), "seconds": hist["seconds"],
                      **{k: v for k, v in hist.items() if k.startswith("best_")}},
            **tasks.checkpoint_quality(task.describe(), test)}
    if getattr(model, "prunewise_hf", None):
        meta["model"] = f"hf:{model.prunewise_hf['folder']}"
    model.prunewise_inputs = checkpoints.input_spec(bundle.example(1))
    checkpoints.save_model(model, out, meta=meta)
    files.write_json(Path(out) / "train_history.json", hist["history"])
    output.say(quiet, f"saved {out}: test {task.title} {test:.4f} "
                      f"(best val epoch {hist['best_epoch']})")


@click.command("eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@model_option
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
@device_option
def eval_cmd(checkpoint, data_name, root, image_size, data_seed, seq_len, factory, split,
             as_json, device_name):
    """Evaluate a checkpoint (with --model: of your own model): top-1, top-5 and loss of a
    classifier, perplexity and loss of a language model."""
    from .. import train

    compute = compute_of(device_name)
    model, bundle = loading.load_checkpoint(checkpoint, data_name, root, image_size, data_seed,
                                            factory, seq_len)
    model = compute.place(model)
    task = loading.task_of(bundle)
    output.emit({"data": bundle.name, "split": split,
                 **train.evaluate_split(model, bundle, split, task=task)}, as_json)


@click.command("info")
@click.argument("name")
@click.option("--num-classes", type=CLASSES, default=10, show_default=True)
@click.option("--in-channels", type=Integer(1, schema.MAX_IN_CHANNELS), default=3,
              show_default=True)
@click.option("--input-size", type=SIDE, default=None,
              help="Input side (default: the model's natural one).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--latency-batch", "latency_batch", type=Integer(1, 4096), default=None,
              help="Also time every conv / linear layer on this machine at this batch size, on "
                   "its grid of kept widths (the table a --latency budget uses; cached).")
@model_option
def info_cmd(name, num_classes, in_channels, input_size, as_json, factory, latency_batch):
    """Params, MACs and a layer table of a zoo model NAME or a checkpoint folder (with
    --model: of your own model, NAME a checkpoint folder or a .safetensors state dict)."""
    from .. import checkpoints, hf, measure, models

    if factory is not None or hf.is_folder(name):
        model = loading.load_model(name, factory)
        x = loading.user_example(model, in_channels, input_size)
        size, arch = input_size, type(model).__name__
    elif Path(name).is_dir():
        model = checkpoints.load_model(name)
        size = input_size or model.prunewise_meta.get("data", {}).get("image_size") \
            or models.input_size(model.prunewise_config["arch"])
    else:
        model = models.create(name, num_classes=num_classes, in_channels=in_channels)
        size = input_size or models.input_size(name)
    if factory is None and not hf.is_folder(name):
        x, arch = loading.example_input(model, size), model.prunewise_config["arch"]
    try:
        table = measure.layer_table(model, x)
    except RuntimeError as e:
        if out_of_memory(e):
            raise
        raise PrunewiseError(f"input size {size} is too small for '{arch}': "
                             f"{str(e).splitlines()[0]}") from None
    info = {"model": arch, "input_size": size,
            "params": measure.params(model), "macs": sum(r["macs"] for r in table),
            "nonzero_params": measure.params(model, nonzero=True), "layers": table}
    if latency_batch is not None:
        from ..structured import latency

        times, reused = latency.cached(model, x, latency_batch, latency.default_folder())
        info["latency"] = {"batch": latency_batch, "dense_ms": times.dense_ms,
                           "outside_layers_ms": times.rest_ms, "reused": reused,
                           "seconds": times.seconds, "key": times.key, "layers": times.layers}
    if as_json:
        output.emit(info, True)
        return
    shape = "x".join(map(str, next(iter(x.values())).shape[1:] if isinstance(x, dict)
                          else x.shape[1:]))
    click.echo(f"{info['model']}  input {shape}  "
               f"params {info['params']:,}  MACs {info['macs']:,}")
    click.echo(f"{'layer':<40} {'type':<8} {'weight':<20} {'output':<16} {'params':>10} "
               f"{'MACs':>14}")
    for r in table:
        click.echo(f"{r['name']:<40} {r['type']:<8} {'x'.join(map(str, r['weight_shape'])):<20} "
                   f"{'x'.join(map(str, r['output_shape'])):<16} {r['params']:>10,} "
                   f"{r['macs']:>14,}")
    got = info.get("latency")
    if got:
        how = "reused" if got["reused"] else f"measured in {got['seconds']:.1f} s"
        click.echo(f"\nlatency at batch {got['batch']} on {got['key']['device']} "
                   f"({got['key']['threads']} threads): dense {got['dense_ms']:.3f} ms, of which "
                   f"{got['outside_layers_ms']:.3f} ms outside the conv / linear layers; table "
                   f"{how}")
        click.echo(f"{'layer':<40} {'ms at full width':>17} {'at half':>9} {'at 0.15':>9}")
        for n, r in got["layers"].items():
            def at(f, r=r):
                ci, co = r["ins"][-1] * (1 if r["depthwise"] else f), r["outs"][-1] * f
                return times.layer_ms(n, ci, co)
            click.echo(f"{n:<40} {at(1.0):>17.4f} {at(0.5):>9.4f} {at(0.15):>9.4f}")


@click.command("methods")
@click.option("--json", "as_json", is_flag=True)
def methods_cmd(as_json):
    """Every pruning method: kind, what it does, its settings and defaults, where it is
    documented."""
    rows = [m.describe() for m in methods.TABLE]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(output.method_table(rows))


@click.group("toy")
def toy_group():
    """Toy problems from the papers: `toy svgg` (SLIMING's redundant-filter toy)."""


@toy_group.command("svgg")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-complete", is_flag=True, help="Skip the complete search on the reduced SVGG.")
@click.option("--json", "as_json", is_flag=True)
def toy_svgg_cmd(seed, no_complete, as_json):
    """SVGG: selection accuracy per layer (GEM, random, one-shot) and the recovered config."""
    from ..structured.sliming import toy
    from ..utils import one_thread

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
        click.echo(f"reduced SVGG C = {cs['channels']}: complete {cs['complete']}, "
                   f"gem {cs['gem']}")


@click.command("report")
@click.argument("folder", type=click.Path())
def report_cmd(folder):
    """Re-render FOLDER/report.md and the plots from FOLDER/report.json."""
    from ..pipeline import report

    if Path(folder).is_dir():
        check_output(folder, "report folder")
    rep = report.render(folder)
    click.echo(f"rendered {Path(folder) / 'report.md'} and {len(rep['plots'])} plot(s): "
               + ", ".join(rep["plots"]))


@click.command("export")
@click.argument("folder", type=click.Path())
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX file to write.")
@click.option("--hf", "hf_path", type=click.Path(), default=None,
              help="HuggingFace folder to write (a model loaded with --model hf:DIR, masked or "
                   "dense): from_pretrained reads it.")
@click.option("--input-size", type=SIDE, default=None,
              help="Input side (default: the data the model was trained on, else the natural one).")
@model_option
def export_cmd(folder, onnx_path, hf_path, input_size, factory):
    """Export a checkpoint (dense, masked or structurally pruned) to ONNX, or a HuggingFace
    model's (dense or masked) to a HuggingFace folder.

    FOLDER is a checkpoint folder or a `prune` output folder (its `model` subfolder is used).
    """
    from .. import checkpoints, hf, interop, models

    if (onnx_path is None) == (hf_path is None):
        raise PrunewiseError("give one of --onnx FILE.onnx or --hf FOLDER")
    if hf_path is not None:
        check_output(hf_path, "--hf")
    else:
        check_output(onnx_path, "--onnx", folder=False)
        if Path(onnx_path).suffix.lower() != ".onnx":
            raise PrunewiseError(f"--onnx must name a .onnx file, got {onnx_path!r}")
    folder = Path(folder)
    if (folder / "model" / checkpoints.CONFIG).is_file() and not (folder / checkpoints.CONFIG).is_file():
        folder = folder / "model"
    model = loading.load_model(folder, factory)
    if hf_path is not None:
        hf.save(model, hf_path)
        click.echo(f"wrote {hf_path} (HuggingFace from_pretrained folder)")
        return
    if factory is not None:
        x = loading.user_example(model, 3, input_size)
    else:
        size = input_size or model.prunewise_meta.get("data", {}).get("image_size") \
            or models.input_size(model.prunewise_config["arch"])
        x = loading.example_input(model, size)
    path = interop.export_onnx(model, onnx_path, x)
    shape = "x".join(map(str, (next(iter(x.values())) if isinstance(x, dict) else x).shape))
    click.echo(f"wrote {path} (input {shape}, dynamic batch)")


@click.command("demo")
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True)
@click.option("--epochs", type=count(1), default=None, help="Training epochs (default: the demo's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Tiny settings that only check the wiring.")
@settings_options(S.Recalibration)
@settings_options(S.Repair)
@device_option
@amp_option
@quiet_option
@holds_out
def demo_cmd(out, epochs, seed, quick, quiet, device_name, amp, **kw):
    """Train resnet20 on the embedded digits data, prune it with FVW and SLIMING next to their
    baselines, and write OUT/report.json, report.md and plots.

    About 2 minutes on 2 CPU cores (--quick: a few seconds)."""
    from ..pipeline.demo import run_demo

    check_output(out)
    recalibration = settings_from(S.Recalibration, kw)
    rep = run_demo(out, epochs=epochs, seed=seed, progress=progress_on(quiet), quick=quick,
                   recalibration=recalibration, repair=settings_from(S.Repair, kw),
                   compute=compute_of(device_name, amp))
    lat = (rep.get("latency_ms") or {}).get("1", {}).get("dense")
    click.echo(f"dense {rep['model']} on digits: test {rep['metric']['title']} "
               f"{rep['scores']['dense']['test']:.4f}, params {rep['params']['dense']:,}, "
               f"MACs {rep['macs']['dense']:,}"
               + (f", latency {lat:.2f} ms (batch 1)" if lat is not None else ""))
    for name, step in rep["runs"].items():
        budget = (f"sparsity {step['sparsity']:.3f}" if step["kind"] == "prune-unstructured"
                  else f"MACs x{step['macs']['ratio']:.3f}")
        click.echo(f"{name:>10}: {budget}, {output.accuracy_line(step)}")
    click.echo(f"wrote {Path(out) / 'report.json'} and report.md in {rep['seconds']:.0f}s")


COMMANDS = [train_cmd, eval_cmd, info_cmd, methods_cmd, toy_group, report_cmd, export_cmd,
            demo_cmd]
