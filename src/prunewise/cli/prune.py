"""The pruning commands: ``prune fvw`` (masks), ``prune sliming`` (channels) and ``bench`` (a
grid of methods x budgets x seeds). Every one calls :mod:`prunewise.runs`."""
from __future__ import annotations

from pathlib import Path

import click

from .. import methods
from ..errors import PrunewiseError
from . import loading, output
from .options import (FRACTION, SEED, FiniteFloat, MethodChoice, amp_option, check_apart,
                      check_output, compute_of, count, data_options, device_option,
                      finetune_of, finetune_options, latency_option, loop_recalibrate_option,
                      measurement_of, method_options, method_setting_options, model_option,
                      pop_method_options, progress_on, quiet_option, recalibration_of,
                      recalibration_options, repair_of, repair_options, allocation_option)


def prune_setup(checkpoint, data: tuple, device_name: str, amp, kw: dict, factory=None):
    """What both prune commands do once their method settings are checked: check the shared
    options, place the run, load the checkpoint and its data. Returns (model, bundle, the
    keyword arguments of the steps after pruning)."""
    finetune, recalibration = finetune_of(kw), recalibration_of(kw)
    measurement = measurement_of(kw)
    compute = compute_of(device_name, amp)
    model, bundle = loading.load_checkpoint(checkpoint, *data, factory)
    if finetune.epochs:
        loading.check_batch(bundle, finetune.batch_size, "--finetune-batch-size")
    return model, bundle, dict(finetune=finetune, recalibration=recalibration,
                               measurement=measurement, compute=compute)


def save_run(out, model, pruned, plan, rep: dict, checkpoint, quiet: bool) -> None:
    """Write a prune command's plan, model and report; print where they went."""
    from .. import report, runs

    rep["checkpoint"] = str(checkpoint)
    runs.save(out, pruned, plan, rep, meta=model.prunewise_meta)
    written = report.write(out, rep, kind=rep["kind"])
    output.say(quiet, f"wrote {Path(out) / 'report.json'}, report.md, "
                      f"{', '.join(written['plots'])}")


@click.group("prune")
def prune_group():
    """Prune a checkpoint: `prune fvw` (unstructured) or `prune sliming` (structured)."""


@prune_group.command("fvw")
@click.argument("checkpoint", type=click.Path())
@data_options
@model_option
@click.option("--sparsity", type=FRACTION, required=True, help="Target global sparsity in (0, 1).")
@click.option("--keep", type=FRACTION, default=None,
              help="Fraction of the unpruned weights kept per iteration (0.98: 114 iterations "
                   "to 90%; 0.9: 22). Default: 0.98, or one shot for the one-shot methods "
                   "(wanda, obs).")
@click.option("--samples", type=count(0), default=2048, show_default=True,
              help="Attribution samples from the training split (0 = all).")
@method_setting_options(methods.UNSTRUCTURED)
@click.option("--method", type=MethodChoice(methods.UNSTRUCTURED), default="fvw",
              show_default=True, help="The scorer (`prunewise methods` lists them).")
@click.option("--batch-size", type=count(1), default=128, show_default=True,
              help="Attribution batch size.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave the layers whose module name matches PATTERN dense (repeatable; "
                   "e.g. fc or 'layer3.*'); --sparsity is then that of the other layers.")
@click.option("--embeddings", is_flag=True,
              help="Prune embedding tables too (left dense by default, like the input stem).")
@finetune_options()
@repair_options
@allocation_option
@recalibration_options
@loop_recalibrate_option
@click.option("--loop-recalibrate-samples", type=count(1), default=None,
              help="Attribution samples the in-loop recalibration uses (default: all).")
@latency_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="Folder for the plan and report.")
@device_option
@amp_option
@quiet_option
def prune_fvw_cmd(checkpoint, data_name, root, image_size, data_seed, sparsity, keep, samples,
                  method, batch_size, exclude, seed, out, quiet, loop_recalibrate,
                  loop_recalibrate_samples, allocation, device_name, amp, factory, embeddings,
                  **kw):
    """Unstructured pruning of CHECKPOINT to --sparsity with FVW (or another --method).

    Writes OUT/masks.safetensors + OUT/plan.json (the plan), OUT/model (the masked, recalibrated
    and optionally fine-tuned checkpoint) and OUT/report.json. An interrupted run resumes from
    OUT/resume, which a finished run removes. Time on 2 CPU cores, resnet20: on digits with
    the defaults (keep 0.98: 114 iterations) about 6 minutes; on Fashion-MNIST with --keep 0.9
    --samples 512 about 7 minutes to 90% sparsity, measuring included.
    """
    from .. import dist, runs

    check_output(out)
    check_apart(out, checkpoint)
    row = methods.get(method, methods.UNSTRUCTURED)
    settings = runs.Unstructured(
        sparsity=sparsity, keep=keep, samples=samples or None, batch_size=batch_size,
        loop_recalibrate=loop_recalibrate, exclude=tuple(exclude),
        recalibrate_samples=loop_recalibrate_samples, repair=repair_of(kw), allocation=allocation,
        embeddings=embeddings,
        options=method_options(row, pop_method_options(methods.UNSTRUCTURED, kw)))
    runs.check_unstructured(method, settings)
    model, bundle, steps_kw = prune_setup(checkpoint, (data_name, root, image_size, data_seed),
                                          device_name, amp, kw, factory)
    resume = Path(out) / "resume"
    pruned, plan, rep = runs.run_unstructured(
        model, bundle, method, settings, seed=seed, progress=progress_on(quiet),
        resume_dir=resume, **steps_kw)
    click.echo(f"{method}: sparsity {rep['sparsity']:.4f}, nonzero params "
               f"{rep['params']['pruned']:,}, {output.accuracy_line(rep)}")
    save_run(out, model, pruned, plan, rep, checkpoint, quiet)
    dist.main_writes(lambda: remove_resume(resume))


def remove_resume(folder: Path) -> None:
    """A finished run's resume file has done its job: remove it (and its folder, when empty)."""
    from ..masking import RESUME_FILE

    (folder / RESUME_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@prune_group.command("sliming")
@click.argument("checkpoint", type=click.Path())
@data_options
@model_option
@click.option("--macs", type=FRACTION, default=None,
              help="Keep this fraction of the MACs, in (0, 1).")
@click.option("--params", type=FRACTION, default=None,
              help="Keep this fraction of the params, in (0, 1).")
@click.option("--normalize", type=click.Choice(["max", "sum"]), default="max", show_default=True,
              help="SLIMING's configuration: how singular values are normalised per group.")
@click.option("--min-channels", type=count(1), default=1, show_default=True)
@click.option("--min-ratio", type=FiniteFloat(0, 1, max_open=True), default=0.0,
              show_default=True,
              help="Keep at least this fraction of every group (0 = the paper's configuration).")
@click.option("--round-to", type=count(1), default=None,
              help="Keep a multiple of this many channels in every group (whole attention "
                   "heads and equal GroupNorm parts are kept anyway).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep every output channel of the layers whose name matches PATTERN "
                   "(repeatable).")
@click.option("--method", type=MethodChoice(methods.STRUCTURED), default="sliming",
              show_default=True, help="SLIMING or a baseline at the same budget.")
@finetune_options()
@recalibration_options
@repair_options
@latency_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--plan", "plan_dir", type=click.Path(), default=None,
              help="Apply a saved channel plan (OUT/plan of an earlier run) instead of a budget.")
@click.option("--out", type=click.Path(), required=True,
              help="Folder for the pruned model and report.")
@device_option
@amp_option
@quiet_option
def prune_sliming_cmd(checkpoint, data_name, root, image_size, data_seed, macs, params, normalize,
                      min_channels, min_ratio, method, seed, plan_dir, out, quiet, device_name,
                      amp, factory, round_to, exclude, **kw):
    """SLIMING (or a structured baseline) pruning of CHECKPOINT into a physically smaller model.

    Writes OUT/model (the smaller, recalibrated and optionally fine-tuned checkpoint), OUT/plan
    (the channel plan) and OUT/report.json. Time on 2 CPU cores for resnet20 on digits: about
    13 s with 5 fine-tuning epochs.
    """
    from .. import runs

    check_output(out)
    check_apart(out, checkpoint)
    settings = runs.Structured(macs=macs, params=params, normalize=normalize,
                               min_channels=min_channels, min_ratio=min_ratio, plan=plan_dir,
                               repair=repair_of(kw), round_to=round_to, exclude=tuple(exclude))
    runs.check_structured(method, settings)
    model, bundle, steps_kw = prune_setup(checkpoint, (data_name, root, image_size, data_seed),
                                          device_name, amp, kw, factory)
    pruned, plan, rep = runs.run_structured(model, bundle, method, settings, seed=seed,
                                            progress=progress_on(quiet), **steps_kw)
    click.echo(output.format_layers(rep["layers"]))
    speed = (rep["latency_ms"] or {}).get("64", {}).get("speedup")
    click.echo(f"{rep['method']}: MACs {rep['macs']['pruned']:,} ({rep['macs']['ratio']:.4f} of "
               f"dense), params {rep['params']['pruned']:,} ({rep['params']['ratio']:.4f}), "
               + (f"speed-up x{speed:.2f} at batch 64, " if speed else "")
               + output.accuracy_line(rep))
    save_run(out, model, pruned, plan, rep, checkpoint, quiet)


@click.command("bench")
@click.option("--model", "model_name", default="resnet20", show_default=True)
@click.option("--data", "data_name", default="digits", show_default=True,
              help="Data set (see `prunewise train --help`).")
@click.option("--root", type=click.Path(file_okay=False), default=None)
@click.option("--methods", "method_list", default=None,
              help="Comma list (default: every unstructured method of `prunewise methods` with "
                   "--sparsity, every structured one with --macs).")
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
              help="Unstructured: fraction kept per iteration (the papers' 0.98 is slower); "
                   "the one-shot methods (wanda, obs) prune in one shot per level.")
@click.option("--samples", type=count(0), default=512, show_default=True,
              help="Unstructured: attribution samples (0 = all).")
@finetune_options(epochs=5, lr=0.05)
@repair_options
@allocation_option
@recalibration_options
@loop_recalibrate_option
@latency_option
@click.option("--out", type=click.Path(), default="runs/bench", show_default=True)
@device_option
@amp_option
@quiet_option
def bench_cmd(model_name, data_name, root, method_list, sparsities, macs_list, seeds, base,
              epochs, keep, samples, loop_recalibrate, allocation, out, quiet, device_name, amp,
              **kw):
    """Compare methods over budgets and seeds: OUT/grid.{md,csv,json,png}; resumable.

    Every cell records the test top-1 pruned, after BatchNorm recalibration and after
    fine-tuning (defaults here: 5 epochs at lr 0.05). Time on 2 CPU cores, resnet20 on digits:
    the structured grid about 1 minute per seed; on Fashion-MNIST, hours (see the README).
    """
    from .. import bench, runs

    check_output(out)
    if sparsities is not None and macs_list is not None:
        raise PrunewiseError("give --sparsity (unstructured grid) or --macs (structured grid), "
                             "not both")
    structured = macs_list is not None
    fix = repair_of(kw)
    if structured and allocation is not None:
        raise PrunewiseError("--allocation shares out mask sparsity (--sparsity grids); a "
                             "structured method decides its own channel counts")
    kind = methods.STRUCTURED if structured else methods.UNSTRUCTURED
    default = "0.8,0.9,0.95" if sparsities is None else sparsities
    budgets = bench.parse_list(macs_list if structured else default,
                               "--macs" if structured else "--sparsity")
    chosen = bench.parse_list(method_list, "--methods", str) if method_list is not None \
        else list(methods.names(kind))
    grid = bench.Grid(methods=tuple(chosen), budgets=tuple(budgets),
                      seeds=tuple(bench.parse_list(seeds, "--seeds", int)), structured=structured,
                      model_name=model_name, data_name=data_name, root=root, epochs=epochs,
                      base=base)
    prune = runs.Unstructured(sparsity=0.0, keep=keep, samples=samples or None,
                              loop_recalibrate=loop_recalibrate, repair=fix,
                              allocation=allocation)
    summary = bench.run(out, grid, prune=prune, finetune=finetune_of(kw),
                        recalibration=recalibration_of(kw), measurement=measurement_of(kw),
                        progress=progress_on(quiet), log=lambda line: output.say(quiet, line),
                        compute=compute_of(device_name, amp))
    click.echo(bench.grid_markdown(summary), nl=False)
    output.say(quiet, f"wrote {Path(out) / 'grid.md'}, grid.csv, grid.json, grid.png "
                      f"({summary['seconds_this_run']:.1f}s)")


COMMANDS = [prune_group, bench_cmd]
