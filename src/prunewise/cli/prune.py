"""The pruning commands: ``prune fvw`` (masks), ``prune sliming`` (channels) and ``bench`` (a
grid of methods x budgets x seeds). Every one calls :mod:`prunewise.runs`."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click

from .. import checks, methods, settings as S
from ..errors import PrunewiseError
from . import loading, output
from .options import (SEED, Integer, MethodChoice, amp_option, check_apart, check_output, compute_of,
                      holds_out,
                      count, data_options, dest, device_option, latency_option, measurement_of,
                      method_options, method_setting_options, model_option,
                      pop_method_options, progress_on, quiet_option, settings_from,
                      settings_options)


def prune_setup(kw: dict):
    """What a prune does once its method settings are checked: the steps after pruning from
    the options, the run placed, the checkpoint and its data loaded. Returns (model, bundle,
    :class:`prunewise.stages.Steps`)."""
    from ..pipeline.stages import Steps

    finetune = settings_from(S.FineTune, kw)
    recalibration = settings_from(S.Recalibration, kw)
    measurement = measurement_of(kw)
    compute = compute_of(kw.pop("device_name"), kw.pop("amp"))
    model, bundle = loading.load_checkpoint(kw["checkpoint"], kw.pop("data_name"), kw.pop("root"),
                                            kw.pop("image_size"), kw.pop("data_seed"),
                                            kw.pop("factory"), kw.pop("seq_len"))
    if finetune.epochs:
        loading.check_batch(bundle, finetune.batch_size, "--finetune-batch-size")
    return model, bundle, Steps(finetune=finetune, recalibration=recalibration,
                                measurement=measurement, compute=compute, seed=kw.pop("seed"),
                                progress=progress_on(kw["quiet"]), task=loading.task_of(bundle))


def save_run(out, model, pruned, plan, rep: dict, checkpoint, quiet: bool) -> None:
    """Write a prune command's plan, model and report; print where they went."""
    from ..pipeline import report, runs

    rep["checkpoint"] = str(checkpoint)
    runs.save(out, pruned, plan, rep, meta=model.prunewise_meta)
    written = report.write(out, rep, kind=rep["kind"])
    output.say(quiet, f"wrote {Path(out) / 'report.json'}, report.md, "
                      f"{', '.join(written['plots'])}")


class PruneGroup(click.Group):
    """``prune``: ``prune CHECKPOINT --method NAME ...`` runs any method of the table (its kind
    decides masks or channels); ``prune fvw`` and ``prune sliming`` are the same command with
    FVW's / SLIMING's kind and default method."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            if not os.path.lexists(args[0]):
                raise click.UsageError(f"'{args[0]}' is neither a prune command "
                                       f"({', '.join(c for c in self.commands if c != 'any')}) "
                                       f"nor an existing checkpoint", ctx)
            args = ["any", *args]
        return super().parse_args(ctx, args)


class AnyMethod(click.Command):
    """``prune CHECKPOINT``: its usage line names no subcommand."""

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.parent.command_path, " ".join(self.collect_usage_pieces(ctx)))


@click.group("prune", cls=PruneGroup)
def prune_group():
    """Prune a checkpoint: `prune CHECKPOINT --method NAME` (any method of `prunewise methods`),
    or the shortcuts `prune fvw CHECKPOINT` (masks) and `prune sliming CHECKPOINT` (channels)."""


#: The options of one kind only (given for a method of the other kind, they are refused).
#: Options both kinds take (from Unstructured's fields): --exclude, --allocation.
SHARED = ("exclude", "allocation")
MASK_ONLY = tuple(dest(f) for n, f in S.Unstructured.OPTIONS.items() if n not in SHARED)
CHANNEL_ONLY = tuple(dest(f) for f in S.Structured.OPTIONS.values())


def prune_options(f):
    """Every option of the prune commands, made from the settings' fields; the kind-specific
    ones default to None so that one given for the other kind can be refused (their real
    defaults are the settings', shown in the help)."""
    for opt in reversed([
            click.argument("checkpoint", type=click.Path()), data_options, model_option,
            click.option("--method", type=MethodChoice(None), default=None,
                         help="The method (`prunewise methods`; default fvw for `prune fvw`, "
                              "sliming for `prune sliming`)."),
            settings_options(S.Unstructured, unset=True),
            settings_options(S.Structured, unset=True),
            method_setting_options(methods.UNSTRUCTURED),
            method_setting_options(methods.STRUCTURED),
            settings_options(S.FineTune), settings_options(S.Repair),
            settings_options(S.Recalibration), latency_option(),
            click.option("--seed", type=SEED, default=0, show_default=True),
            click.option("--out", type=click.Path(), required=True,
                         help="Folder for the plan, the pruned model and the report."),
            device_option, amp_option, quiet_option]):
        f = opt(f)
    return f


def kind_of(method: str, kw: dict) -> str:
    """The kind of ``method``: the one kind that has it, else the one its budget names
    (``random`` is both: --sparsity makes it masks, --macs / --params / --plan channels)."""
    kinds = [k for k in methods.KINDS if method in methods.names(k)]
    if not kinds:
        every = sorted(set(methods.names(methods.UNSTRUCTURED) + methods.names(methods.STRUCTURED)))
        raise PrunewiseError(f"unknown method '{method}'; choose one of: {', '.join(every)}")
    if len(kinds) == 1:
        return kinds[0]
    return methods.UNSTRUCTURED if kw.get("sparsity") is not None else methods.STRUCTURED


def check_kind(kind: str, method: str, kw: dict) -> None:
    """Refuse an option of the other kind (naming it), and a method of the other kind."""
    if method not in methods.names(kind):
        raise PrunewiseError(f"'{method}' is not {'a mask' if kind == methods.UNSTRUCTURED else 'a channel'} "
                             f"method (choose one of: {', '.join(methods.names(kind))}); "
                             f"`prunewise prune CHECKPOINT --method {method}` picks the kind itself")
    mine, theirs = ("mask", "channel") if kind == methods.UNSTRUCTURED else ("channel", "mask")
    other = S.Structured if kind == methods.UNSTRUCTURED else S.Unstructured
    for name, flag in other.OPTIONS.items():
        if name not in SHARED and kw.get(dest(flag)) is not None:
            raise PrunewiseError(f"{flag.split('/')[0]} is for {theirs} methods; '{method}' is "
                                 f"a {mine} method")


def run_prune(kw: dict, kind: str | None, default_method: str | None) -> None:
    """The one prune command: check every option, then prune, report and save."""
    method = kw.pop("method") or default_method
    if method is None:
        raise PrunewiseError("give --method NAME (`prunewise methods` lists them)")
    kind = kind or kind_of(method, kw)
    check_kind(kind, method, kw)
    for key in CHANNEL_ONLY if kind == methods.UNSTRUCTURED else MASK_ONLY:
        kw.pop(key)
    check_output(kw["out"])
    check_apart(kw["out"], kw["checkpoint"])
    row = methods.get(method, kind)
    options = method_options(row, {**pop_method_options(methods.UNSTRUCTURED, kw),
                                   **pop_method_options(methods.STRUCTURED, kw)})
    (prune_masks if kind == methods.UNSTRUCTURED else prune_channels)(method, options, kw)


def prune_masks(method: str, options, kw: dict) -> None:
    from .. import dist
    from ..pipeline import runs

    if kw["sparsity"] is None and kw["nm"] is not None:   # N:M fixes the sparsity
        n, m = checks.nm("--nm", kw["nm"])
        kw["sparsity"] = 1.0 - n / m
    if kw["sparsity"] is None:
        raise PrunewiseError(f"give --sparsity FRACTION (or --nm N:M) for the mask method "
                             f"'{method}'")
    given = kw.get("samples")
    settings = settings_from(S.Unstructured, kw, repair=settings_from(S.Repair, kw),
                             options=options)
    runs.check_unstructured(method, settings)
    model, bundle, steps = prune_setup(kw)
    if bundle.task == "causal_lm":
        settings = replace(settings, samples=loading.calibration_samples(given, bundle))
    resume = Path(kw["out"]) / "resume"
    pruned, plan, rep = runs.run_unstructured(model, bundle, method, settings,
                                              resume_dir=resume, steps=steps)
    click.echo(f"{method}: sparsity {rep['sparsity']:.4f}, nonzero params "
               f"{rep['params']['pruned']:,}, {output.accuracy_line(rep)}")
    save_run(kw["out"], model, pruned, plan, rep, kw["checkpoint"], kw["quiet"])
    dist.main_writes(lambda: remove_resume(resume))


def prune_channels(method: str, options, kw: dict) -> None:
    from ..pipeline import runs

    allocation = kw.pop("allocation")
    if allocation not in (None, *methods.STRUCTURED_ALLOCATIONS):
        raise PrunewiseError(f"--allocation {allocation} shares out mask sparsity; a channel "
                             f"method takes --allocation errors (measured group errors) or "
                             f"its own configuration (no --allocation)")
    settings = settings_from(S.Structured, kw, repair=settings_from(S.Repair, kw),
                             exclude=tuple(kw.pop("exclude")), options=options,
                             allocation=allocation)
    runs.check_structured(method, settings)
    model, bundle, steps = prune_setup(kw)
    pruned, plan, rep = runs.run_structured(model, bundle, method, settings, steps=steps)
    click.echo(output.format_layers(rep["layers"]))
    speed = (rep["latency_ms"] or {}).get("64", {}).get("speedup")
    click.echo(f"{rep['method']}: MACs {rep['macs']['pruned']:,} ({rep['macs']['ratio']:.4f} of "
               f"dense), params {rep['params']['pruned']:,} ({rep['params']['ratio']:.4f}), "
               + (f"speed-up x{speed:.2f} at batch 64, " if speed else "")
               + output.accuracy_line(rep))
    asked = rep.get("latency_budget")
    if asked:
        table = asked.get("table") or {}
        click.echo(f"latency at batch {asked['batch']}: asked {asked['requested']:g} of dense, "
                   f"predicted {asked['predicted']:.3f}, measured {asked['measured']:.3f} "
                   f"(quartiles {asked['spread'][0]:.3f}-{asked['spread'][1]:.3f}); latency "
                   f"table {'reused' if table.get('reused') else 'measured'} "
                   f"({table.get('seconds', 0):.1f} s)")
    save_run(kw["out"], model, pruned, plan, rep, kw["checkpoint"], kw["quiet"])


@prune_group.command("any", hidden=True, cls=AnyMethod)
@prune_options
@holds_out
def prune_cmd(**kw):
    """Prune CHECKPOINT with any method of the table (--method NAME): masks for a mask method
    (--sparsity), a physically smaller model for a channel method (--macs, --params or --plan).

    Writes the plan, OUT/model (the pruned, repaired or recalibrated and optionally fine-tuned
    checkpoint) and OUT/report.json."""
    run_prune(kw, None, None)


@prune_group.command("fvw")
@prune_options
@holds_out
def prune_fvw_cmd(**kw):
    """Unstructured pruning of CHECKPOINT to --sparsity with FVW (or another mask --method).

    Writes OUT/masks.safetensors + OUT/plan.json (the plan), OUT/model (the masked, recalibrated
    and optionally fine-tuned checkpoint) and OUT/report.json. An interrupted run resumes from
    OUT/resume, which a finished run removes. Time on 2 CPU cores, resnet20: on digits with
    the defaults (keep 0.98: 114 iterations) about 6 minutes; on Fashion-MNIST with --keep 0.9
    --samples 512 about 7 minutes to 90% sparsity, measuring included.
    """
    run_prune(kw, methods.UNSTRUCTURED, "fvw")


def remove_resume(folder: Path) -> None:
    """A finished run's resume file has done its job: remove it (and its folder, when empty)."""
    from ..unstructured.engine import RESUME_FILE

    (folder / RESUME_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@prune_group.command("sliming")
@prune_options
@holds_out
def prune_sliming_cmd(**kw):
    """SLIMING (or another channel --method) pruning of CHECKPOINT into a physically smaller
    model.

    Writes OUT/model (the smaller, recalibrated and optionally fine-tuned checkpoint), OUT/plan
    (the channel plan) and OUT/report.json. Time on 2 CPU cores for resnet20 on digits: about
    13 s with 5 fine-tuning epochs.
    """
    run_prune(kw, methods.STRUCTURED, "sliming")


#: The mask settings a bench grid takes from the command line.
BENCH_MASK_OPTIONS = ("keep", "samples", "allocation", "loop_recalibrate")


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
@click.option("--latency", "latency_list", default=None,
              help="Comma list of fractions of the dense latency to keep, measured on this "
                   "machine (structured grid), e.g. 0.7,0.5.")
@click.option("--latency-batch", type=Integer(1, 4096), default=64, show_default=True,
              help="The batch size a --latency grid is measured at.")
@click.option("--macs", "macs_list", default=None,
              help="Comma list of MACs fractions to keep (structured grid), e.g. 0.5,0.25.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--base", default=None,
              help="Reuse base checkpoints: a folder holding seed-S/ checkpoint folders, or a "
                   "path pattern with {seed} (default: train them into OUT/base).")
@click.option("--epochs", type=count(1), default=S.BENCH_EPOCHS, show_default=True,
              help="Base model training epochs (without --base).")
@settings_options(S.Unstructured, S.BENCH_PRUNE, only=BENCH_MASK_OPTIONS)
@settings_options(S.FineTune, S.BENCH_FINETUNE)
@settings_options(S.Repair)
@settings_options(S.Recalibration)
@latency_option(S.BENCH_MEASUREMENT)
@click.option("--out", type=click.Path(), default="runs/bench", show_default=True)
@device_option
@amp_option
@quiet_option
@holds_out
def bench_cmd(model_name, data_name, root, method_list, sparsities, latency_list, latency_batch,
              macs_list, seeds, base,
              epochs, out, quiet, device_name, amp, **kw):
    """Compare methods over budgets and seeds: OUT/grid.{md,csv,json,png}; resumable.

    Every cell records the test score (top-1 for a classifier) pruned, after recalibration and
    after fine-tuning (the grid's own, shorter defaults: see below). Time on 2 CPU cores,
    resnet20 on digits: the structured grid about 1 minute per seed; on Fashion-MNIST, hours.
    """
    from ..pipeline import bench

    check_output(out)
    given = [f for f, v in (("--sparsity", sparsities), ("--macs", macs_list),
                            ("--latency", latency_list)) if v is not None]
    if len(given) > 1:
        raise PrunewiseError(f"give --sparsity (unstructured grid), --macs or --latency "
                             f"(structured grids), not both {' and '.join(given)}")
    if latency_list is not None:
        macs_list = latency_list
    structured = macs_list is not None
    fix = settings_from(S.Repair, kw)
    if structured and kw["allocation"] not in (None, *methods.STRUCTURED_ALLOCATIONS):
        raise PrunewiseError(f"--allocation {kw['allocation']} shares out mask sparsity "
                             f"(--sparsity grids); a channel grid takes --allocation errors "
                             f"(measured channel counts) or the methods' own counts")
    kind = methods.STRUCTURED if structured else methods.UNSTRUCTURED
    default = "0.8,0.9,0.95" if sparsities is None else sparsities
    budgets = bench.parse_list(macs_list if structured else default,
                               ("--latency" if latency_list is not None else "--macs")
                               if structured else "--sparsity")
    chosen = bench.parse_list(method_list, "--methods", str) if method_list is not None \
        else list(methods.names(kind))
    grid = bench.Grid(methods=tuple(chosen), budgets=tuple(budgets),
                      seeds=tuple(bench.parse_list(seeds, "--seeds", int)), structured=structured,
                      latency_batch=latency_batch if latency_list is not None else None,
                      model_name=model_name, data_name=data_name, root=root, epochs=epochs,
                      base=base)
    prune = settings_from(S.Unstructured, kw, S.BENCH_PRUNE, only=BENCH_MASK_OPTIONS, repair=fix)
    summary = bench.run(out, grid, prune=prune, finetune=settings_from(S.FineTune, kw),
                        recalibration=settings_from(S.Recalibration, kw),
                        measurement=measurement_of(kw, S.BENCH_MEASUREMENT),
                        progress=progress_on(quiet), log=lambda line: output.say(quiet, line),
                        compute=compute_of(device_name, amp))
    click.echo(bench.grid_markdown(summary), nl=False)
    output.say(quiet, f"wrote {Path(out) / 'grid.md'}, grid.csv, grid.json, grid.png "
                      f"({summary['seconds_this_run']:.1f}s)")


COMMANDS = [prune_group, bench_cmd]
