"""Every setting of a run, declared once: small frozen dataclasses whose fields carry their
default, their help, their kind and limits (:func:`prunewise.checks.setting`).

The fields are checked when an object is built (:func:`prunewise.checks.check_fields`, plus the
checks that need two fields), and nowhere else. The command line makes its options from the
same fields (a class's ``OPTIONS`` maps a field to its flag; the option's default is the
field's), so a default is written once, here. No torch: ``prunewise --help`` reads this module.

* :class:`Training` -- how :func:`prunewise.train.fit` trains; :class:`FineTune` is the same
  with fine-tuning's defaults (the run's fine-tuning stage).
* :class:`Repair`, :class:`Recalibration` -- the stages that follow pruning.
* :class:`Measurement`, :class:`Compute` -- latency, and where a run computes.
* :class:`Unstructured`, :class:`Structured` -- mask and channel pruning; a method's own
  settings (:mod:`prunewise.methods`) ride in their ``options``.
* :data:`BENCH_PRUNE`, :data:`BENCH_FINETUNE`, :data:`BENCH_MEASUREMENT` -- the bench grid's
  defaults (shorter runs than a single prune), for the Python API and the command line alike.
"""
from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, replace
from typing import Any, ClassVar

from . import checks, methods, names
from .checks import setting
from .errors import PrunewiseError


@dataclass(frozen=True)
class Training:
    """How :func:`prunewise.train.fit` trains: ``epochs`` with a cosine schedule from ``lr``,
    ``optimizer`` ('sgd' with Nesterov momentum 0.9, or 'adam'), ``weight_decay``, global
    ``batch_size``; ``patience`` stops after that many epochs without a better validation
    score (None: never)."""
    epochs: int = setting(30, "training epochs", "int", low=0, high=checks.MAX_COUNT)
    lr: float = setting(0.05, "learning rate", "float", low=0.0, high=10.0, low_open=True)
    optimizer: str = setting("sgd", "optimizer", "choice", choices=names.OPTIMIZERS)
    weight_decay: float = setting(5e-4, "weight decay", "float", low=0.0, high=1.0)
    batch_size: int = setting(64, "batch size", "int", low=1, high=checks.MAX_COUNT)
    patience: int | None = setting(None, "early-stopping patience (epochs without a better "
                                         "validation score)", "int", low=1,
                                   high=checks.MAX_COUNT)
    OPTIONS: ClassVar[dict] = {"epochs": "--epochs", "lr": "--lr", "optimizer": "--optimizer",
                               "weight_decay": "--weight-decay", "batch_size": "--batch-size",
                               "patience": "--patience"}

    def __post_init__(self) -> None:
        checks.check_fields(self)


@dataclass(frozen=True)
class FineTune(Training):
    """Fine-tuning after pruning (masked for masks): :class:`Training` with fine-tuning's
    defaults; ``epochs=0`` skips it."""
    epochs: int = setting(0, "fine-tuning epochs (0: none)", "int", low=0,
                          high=checks.MAX_COUNT, label="fine-tune epochs")
    lr: float = setting(0.01, "fine-tuning learning rate", "float", low=0.0, high=10.0,
                        low_open=True, label="fine-tune learning rate")
    OPTIONS: ClassVar[dict] = {**Training.OPTIONS, "epochs": "--finetune-epochs",
                               "batch_size": "--finetune-batch-size"}


@dataclass(frozen=True)
class Recalibration:
    """BatchNorm recalibration on ``samples`` training images after pruning."""
    samples: int = setting(512, "training images that re-estimate the BatchNorm statistics "
                                "after pruning", "int", low=1, high=checks.MAX_COUNT,
                           label="recalibration samples")
    enabled: bool = setting(True, "re-estimate BatchNorm statistics after pruning (a repaired "
                                  "model is not recalibrated)", "flag",
                            label="recalibration enabled")
    batch_size: int = setting(128, "recalibration batch size", "int", low=1,
                              high=checks.MAX_COUNT)
    OPTIONS: ClassVar[dict] = {"samples": "--recalibrate-samples",
                               "enabled": "--recalibrate/--no-recalibrate"}

    def __post_init__(self) -> None:
        checks.check_fields(self)


@dataclass(frozen=True)
class Repair:
    """Layer-wise repair of a pruned model, masks or channels
    (:func:`prunewise.repair.reconstruct`), on ``samples`` training images right after
    pruning. ``enabled`` None (the default) means: on when the run does not fine-tune, off when
    it does (:meth:`for_run`; repair won every cell it was measured in without fine-tuning,
    docs/results.md, "Repair: every method with and without it"); a run records the choice it
    made. A repaired model is not BatchNorm-recalibrated: its layers were fitted to the
    statistics they run with, and recalibrating afterwards cost 0.8 to 35 points in the first
    probe (docs/methods.md, "Repair")."""
    enabled: bool | None = setting(None, "refit the kept weights of every pruned layer (masks) "
                                         "or of every layer that lost input channels "
                                         "(channels) to the dense model's outputs, by least "
                                         "squares, instead of recalibrating BatchNorm (default: "
                                         "on when the run does not fine-tune)", "flag",
                                   label="repair")
    samples: int = setting(256, "training images the repair fits each pruned layer on", "int",
                           low=1, high=checks.MAX_COUNT, label="repair samples")
    damp: float = setting(0.01, "repair's ridge damping, relative to the mean diagonal",
                          "float", low=0.0, low_open=True, label="repair damp")
    batch_size: int = setting(128, "repair batch size", "int", low=1, high=checks.MAX_COUNT)
    OPTIONS: ClassVar[dict] = {"enabled": "--repair/--no-repair", "samples": "--repair-samples"}

    def __post_init__(self) -> None:
        checks.check_fields(self)

    def for_run(self, finetune: "FineTune") -> "Repair":
        """These settings with the choice made: ``enabled`` as given, or (None) on exactly when
        ``finetune`` trains no epoch."""
        if self.enabled is not None:
            return self
        return replace(self, enabled=not finetune.epochs)

    @staticmethod
    def check(value: Any) -> None:
        """Raise PrunewiseError unless ``value`` is a :class:`Repair` (a settings field)."""
        if not isinstance(value, Repair):
            raise PrunewiseError(f"repair must be a runs.Repair, got {value!r}")


@dataclass(frozen=True)
class Measurement:
    """Latency on the run's device: median of ``repeats`` forward passes per batch size
    (``latency=False``: none)."""
    latency: bool = setting(True, "measure latency", "flag")
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = setting(20, "timed forward passes per batch size (1 and 64) for the dense "
                               "and the pruned model; 0 = no latency", "int", low=1,
                           high=checks.MAX_COUNT, label="latency repeats")
    warmup: int = setting(3, "untimed passes first", "int", low=0, high=checks.MAX_COUNT,
                          label="latency warm-up passes")

    def __post_init__(self) -> None:
        checks.check_fields(self)
        for b in self.batch_sizes:
            checks.integer("latency batch size", b, 1)

    def with_repeats(self, n: int) -> "Measurement":
        """These settings with ``n`` timed passes (0: no latency; the warm-up at most 3)."""
        return Measurement(latency=n > 0, batch_sizes=self.batch_sizes, repeats=max(n, 1),
                           warmup=min(self.warmup, max(n, 1)))


@dataclass(frozen=True)
class Compute:
    """Where a run computes. ``device``: auto, cpu, cuda, cuda:N or mps (None = wherever the
    model already is; otherwise a copy moves there, the caller's model stays put). ``amp``:
    'bf16' or 'fp16' mixed precision for training and fine-tuning, CUDA only; pruning criteria
    (FVW's attack, Taylor, CHIP, SLIMING) always compute in float32 or float64."""
    device: str | None = None
    amp: str | None = None

    def place(self, model):
        """``model`` on this device (itself when it is there already, else a moved copy);
        raises PrunewiseError for an unavailable device or ``amp`` off CUDA."""
        from . import device

        dev = device.of(model) if self.device is None else device.resolve(self.device)
        device.check_amp(self.amp, dev)
        if device.of(model) == dev:
            return model
        return copy.deepcopy(model).to(dev)

    def record(self, model) -> dict:
        """What the report's ``compute`` says about a run on ``model``."""
        from . import device, dist

        return {"device": str(device.of(model)), "amp": self.amp, "world": dist.world()}


@dataclass(frozen=True)
class Unstructured:
    """Mask pruning settings. ``sparsity``: the target; ``samples``: attribution samples (None
    = all); ``batch_size``: attribution batch size; ``keep``: the fraction of the unpruned
    weights kept per iteration (None = the method's default: one shot for a one-shot method of
    the table, else 0.98); ``loop_recalibrate``: recalibrate BatchNorm inside the iterative
    loop (None = the method's default in the method table) on at most
    ``recalibrate_samples`` attribution samples (None = all of them); ``track_accuracy``: the
    task's primary metric on the validation split per iteration; ``exclude``: module-name
    patterns (``"fc"``, ``"layer3.*"``) whose weights stay dense (the sparsity is then that of
    the remaining prunable weights); ``options``: the method's own settings (e.g.
    :class:`prunewise.methods.FVWSettings`; None = its defaults); ``repair``: layer-wise repair
    after pruning (:class:`Repair`, off by default); ``allocation``: how the kept weights are
    shared between layers (``global``, ``lamp``, ``uniform``, ``row``; None = the method's
    default in the method table); ``embeddings``: prune ``nn.Embedding`` weights too (left
    dense by default, like the input stem; the report's ``left_out`` lists every weight matrix
    left dense and why)."""
    sparsity: float = setting(MISSING, "masks: target global sparsity in (0, 1)", "float",
                              low=0.0, high=1.0, low_open=True, high_open=True)
    keep: float | None = setting(None, "masks: fraction of the unpruned weights kept per "
                                       "iteration (0.98: 114 iterations to 90%; 0.9: 22); "
                                       "default 0.98, or one shot for the one-shot methods "
                                       "(magnitude, random, wanda, obs, sparsegpt, exactobs)",
                                 "float", low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    samples: int | None = setting(2048, "masks: attribution samples from the training split "
                                        "(0 = all)", "int", low=1, high=checks.MAX_COUNT,
                                  zero_is_none=True, label="attribution samples")
    batch_size: int = setting(128, "masks: attribution batch size", "int", low=1,
                              high=checks.MAX_COUNT, label="attribution batch size")
    loop_recalibrate: bool | None = setting(None, "masks: recalibrate BatchNorm inside the "
                                                  "iterative pruning loop (default: the "
                                                  "method's, `prunewise methods`; "
                                                  "--no-loop-recalibrate is the reference FVW)",
                                            "flag", label="loop recalibration")
    track_accuracy: bool = setting(True, "the primary metric per iteration (on at most 1024 "
                                         "validation samples)", "flag", label="track accuracy")
    exclude: tuple[str, ...] = setting((), "leave the layers whose module name matches PATTERN "
                                           "dense (masks) or keep their output channels "
                                           "(channels); repeatable, e.g. fc or 'layer3.*'",
                                       "patterns")
    recalibrate_samples: int | None = setting(None, "masks: attribution samples the in-loop "
                                                    "recalibration uses (default: all)", "int",
                                              low=1, high=checks.MAX_COUNT,
                                              label="loop recalibration samples")
    options: Any = None
    repair: Repair = Repair()
    allocation: str | None = setting(None, "masks: how the kept weights are shared between "
                                           "layers: global (pooled scores), lamp (LAMP's "
                                           "layer-adaptive counts), uniform (same fraction per "
                                           "layer), row (same fraction per output row), "
                                           "errors (the counts that minimise each layer's "
                                           "measured pruned-and-updated output error); "
                                           "default: the method's. Channels: errors (counts "
                                           "from measured group errors) or none (the "
                                           "method's own)", "choice",
                                     choices=methods.ALLOCATIONS)
    embeddings: bool = setting(False, "masks: prune embedding tables too (left dense by "
                                      "default, like the input stem)", "flag")
    loop_repair: bool = setting(False, "masks: repair the working copy after every iteration "
                                       "of the iterative loop, so the next scores see a "
                                       "repaired network (a variant of ours; instead of the "
                                       "loop recalibration)", "flag", label="loop repair")
    nm: str | None = setting(None, "masks: N:M semi-structured sparsity such as 2:4: in every "
                                   "M consecutive weights of a row keep the N best, in one "
                                   "shot (sparsity 1 - N/M)", "nm", label="N:M pattern")
    OPTIONS: ClassVar[dict] = {"sparsity": "--sparsity", "keep": "--keep",
                               "samples": "--samples", "batch_size": "--batch-size",
                               "embeddings": "--embeddings/--no-embeddings",
                               "allocation": "--allocation",
                               "loop_recalibrate": "--loop-recalibrate/--no-loop-recalibrate",
                               "recalibrate_samples": "--loop-recalibrate-samples",
                               "loop_repair": "--loop-repair/--no-loop-repair",
                               "nm": "--nm", "exclude": "--exclude"}

    def __post_init__(self) -> None:
        checks.check_fields(self)
        Repair.check(self.repair)
        if self.nm is not None:
            n, m = checks.nm("N:M pattern", self.nm)
            if abs(self.sparsity - (1.0 - n / m)) > 1e-9:
                raise PrunewiseError(f"N:M {n}:{m} prunes exactly {1.0 - n / m:g} of the "
                                     f"weights; give sparsity {1.0 - n / m:g}")
            if self.allocation is not None:
                raise PrunewiseError("an N:M pattern decides every row's count itself: drop "
                                     "the allocation")


@dataclass(frozen=True)
class Structured:
    """Channel pruning settings: exactly one of ``macs`` / ``params`` / ``latency`` (fractions
    kept; ``latency`` measured on this machine at batch size ``latency_batch``), or ``plan``,
    the folder of a saved channel plan to apply instead of a budget.
    ``min_channels``: the floor of every group; ``options``: the method's own settings (e.g.
    :class:`prunewise.methods.SlimingSettings`, SLIMING's configuration step; None = its
    defaults); ``repair``: refit the layers that consume pruned channels (:class:`Repair`, off
    by default); ``round_to``: every kept count a multiple of it (on top of what attention
    heads and GroupNorm groups require); ``exclude``: layer-name patterns whose output channels
    stay (Torch-Pruning's ignored layers)."""
    macs: float | None = setting(None, "channels: keep this fraction of the MACs, in (0, 1)",
                                 "float", low=0.0, high=1.0, low_open=True, high_open=True,
                                 label="the budget")
    params: float | None = setting(None, "channels: keep this fraction of the params, in "
                                         "(0, 1)", "float", low=0.0, high=1.0, low_open=True,
                                   high_open=True, label="the budget")
    latency: float | None = setting(None, "channels: keep at most this fraction of the dense "
                                          "model's latency, measured on this machine at "
                                          "--latency-batch, in (0, 1)", "float", low=0.0,
                                    high=1.0, low_open=True, high_open=True,
                                    label="the latency budget")
    latency_batch: int = setting(64, "channels: the batch size a --latency budget is measured "
                                     "at", "int", low=1, high=checks.MAX_COUNT,
                                 label="latency batch size")
    latency_cache: str | None = setting(None, "channels: the folder a --latency budget keeps "
                                              "the device's latency tables in (default "
                                              "$PRUNEWISE_CACHE/latency or "
                                              "~/.cache/prunewise/latency)", "path")
    min_channels: int = setting(1, "channels: the fewest channels any group keeps", "int",
                                low=1, high=checks.MAX_COUNT, label="min channels")
    plan: str | None = setting(None, "channels: apply a saved channel plan (OUT/plan of an "
                                     "earlier run) instead of a budget", "path")
    repair: Repair = Repair()
    round_to: int | None = setting(None, "channels: keep a multiple of this many channels in "
                                         "every group (whole attention heads and equal "
                                         "GroupNorm parts are kept anyway)", "int", low=1,
                                   high=checks.MAX_COUNT)
    exclude: tuple[str, ...] = setting((), "layer-name patterns whose output channels stay",
                                       "patterns")
    allocation: str | None = setting(None, "channels: how many channels each group keeps: "
                                           "the method's own configuration (default), or "
                                           "errors (the counts that minimise the summed "
                                           "measured network-output error of cutting each "
                                           "group alone, repaired)", "choice",
                                     choices=methods.STRUCTURED_ALLOCATIONS)
    options: Any = None
    OPTIONS: ClassVar[dict] = {"macs": "--macs", "params": "--params", "latency": "--latency",
                               "latency_batch": "--latency-batch",
                               "latency_cache": "--latency-cache",
                               "min_channels": "--min-channels", "round_to": "--round-to",
                               "plan": "--plan"}   # --exclude, --allocation: Unstructured's

    def __post_init__(self) -> None:
        checks.check_fields(self)
        Repair.check(self.repair)
        budgets = [b for b in (self.macs, self.params, self.latency) if b is not None]
        if self.plan is not None:
            if self.allocation is not None:
                raise PrunewiseError("a saved plan replaces the allocation: drop it")
            if budgets:
                raise PrunewiseError("a saved plan replaces the budget: drop macs / params / "
                                     "latency")
            return
        if len(budgets) != 1:
            raise PrunewiseError("give exactly one budget: macs FRACTION, params FRACTION or "
                                 "latency FRACTION")


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of settings class ``cls`` (what an option shows)."""
    return cls.__dataclass_fields__[name].default


#: The bench grid's defaults: a few hundred attribution samples, 10% per iteration, five
#: fine-tuning epochs at a higher rate, ten timed passes.
BENCH_PRUNE = Unstructured(sparsity=0.9, keep=0.9, samples=512)   # sparsity: set per level
BENCH_FINETUNE = FineTune(epochs=5, lr=0.05)
BENCH_MEASUREMENT = Measurement(repeats=10)
BENCH_EPOCHS = 20   # training epochs of a bench base model (without --base)
