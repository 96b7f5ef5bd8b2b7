"""The method table: every pruning method prunewise offers, declared once, in :data:`TABLE`.

A row (:class:`Method`) says what the rest of the program needs to know about a method: its
name and kind, a one-line summary, where it is documented, its own settings (a small frozen
dataclass whose defaults are the method's defaults), whether it needs data, whether the
pipeline recalibrates BatchNorm inside its loop by default, how its kept count is shared
between layers by default (``allocation``: one of :data:`ALLOCATIONS`), whether it prunes in
one shot by default (``one_shot``: every method whose scores do not depend on what was
pruned before, so that iterating without fine-tuning would give the same masks: magnitude,
random and the post-training methods; a run given ``keep`` still iterates), and ``build``: the
``"module:function"`` that makes the method's working part, imported only when it runs (so
this module, and with it ``prunewise --help`` and ``prunewise methods``, needs no torch):

* an unstructured method's ``build(settings, seed)`` returns a mask-engine scorer
  (:class:`prunewise.masking.Scorer`), run by :func:`prunewise.masking.run`;
* a structured method's ``build(settings, budget, batches, seed)`` returns the
  ``(configure, select)`` pair run by :func:`prunewise.structured.prune` (``budget``: the
  pipeline's :class:`prunewise.runs.Structured`).

The pipeline (:mod:`prunewise.runs`), the bench grid, the demo, the command line (its
``--method`` choices and ``prunewise methods``) and the docs all read this table; nothing else
compares a method's name. docs/architecture.md, "How to add a method", walks through a new row.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any, Callable

from . import checks
from .errors import PrunewiseError

UNSTRUCTURED = "unstructured"
#: Mask allocations (:func:`prunewise.masking.select`): pooled scores, LAMP's layer-adaptive
#: counts, the same fraction per layer, the same fraction per output row, the counts that
#: minimise the measured layer errors.
ALLOCATIONS = ("global", "lamp", "uniform", "row", "errors")
#: Channel allocations: the method's own configuration step, or measured group errors
#: (:mod:`prunewise.structured.group_errors`).
STRUCTURED_ALLOCATIONS = ("method", "errors")
STRUCTURED = "structured"
KINDS = (UNSTRUCTURED, STRUCTURED)


# ---- the methods' own settings ---------------------------------------------------------------

@dataclass(frozen=True)
class NoSettings:
    """A method with no settings of its own."""


#: A method setting's field (:func:`prunewise.checks.setting`; the command line turns each into
#: an option, :func:`prunewise.checks.check_fields` checks it).
setting = checks.setting


@dataclass(frozen=True)
class FVWSettings:
    """FVW's attack: step ``alpha``, ``steps`` (K) sign steps; ``class_groups``: one attack per
    group of classes (None: one over all data), combined by ``aggregate`` ('union': best rank in
    any group, 'sum'); ``descent``: add a descent pass per group (class-group mode only)."""
    alpha: float = setting(1e-8, "attack step size", "float", low=0.0, low_open=True)
    steps: int = setting(2, "attack steps K", "int", low=1, high=10_000, label="attack steps")
    class_groups: int | None = setting(None, "class-group mode with this many groups", "int",
                                       low=1, high=100_000)
    aggregate: str = setting("union", "how class groups combine", "choice",
                             choices=("union", "sum"))
    descent: bool = setting(False, "class-group mode: add a descent pass per group", "flag")

    def __post_init__(self) -> None:
        checks.check_fields(self)


@dataclass(frozen=True)
class SlimingSettings:
    """SLIMING's configuration step (step i), for ``sliming`` and ``sliming-l1``: how every
    group's singular values are normalised (``normalize``: by the largest, 'max', or by their
    sum) and ``min_ratio``, the least fraction of every group kept (0: the paper's
    configuration; our addition for networks where a group starves)."""
    normalize: str = setting("max", "SLIMING's configuration: how singular values are "
                                    "normalised per group", "choice", choices=("max", "sum"),
                             label="normalization")
    min_ratio: float = setting(0.0, "keep at least this fraction of every group (0 = the "
                                    "paper's configuration)", "float", low=0.0, high=1.0,
                               high_open=True, label="min ratio")

    def __post_init__(self) -> None:
        checks.check_fields(self)


@dataclass(frozen=True)
class SparseGPTSettings:
    """SparseGPT's own settings: ``block_size`` inputs per column block (its lazy update and
    adaptive mask choice), ``hessian_damp`` the ridge added to the input Gram matrix, relative
    to its mean diagonal (the paper's 1%)."""
    block_size: int = setting(128, "sparsegpt: inputs per column block", "int", low=1,
                              high=1 << 20, label="block size")
    hessian_damp: float = setting(0.01, "ridge added to the inputs' Gram matrix, relative to "
                                        "its mean diagonal", "float", low=0.0,
                                  high=10.0, low_open=True, label="hessian damp")

    def __post_init__(self) -> None:
        checks.check_fields(self)


@dataclass(frozen=True)
class ExactOBSSettings:
    """ExactOBS's own setting: ``hessian_damp``, as SparseGPT's."""
    hessian_damp: float = SparseGPTSettings.__dataclass_fields__["hessian_damp"]

    def __post_init__(self) -> None:
        checks.check_fields(self)


# ---- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One row of the method table (see the module docstring)."""
    name: str
    kind: str
    summary: str
    docs: str
    build: str | Callable
    settings: type = NoSettings
    needs_data: bool = True
    loop_recalibrate: bool = False
    allocation: str = "global"
    one_shot: bool = False

    def builder(self) -> Callable:
        """The function ``build`` names (imported now)."""
        if callable(self.build):
            return self.build
        module, _, attr = self.build.partition(":")
        return getattr(importlib.import_module(module), attr)

    def options(self, value: Any = None) -> Any:
        """``value`` checked as this method's settings; None gives the defaults."""
        if value is None:
            return self.settings()
        if not isinstance(value, self.settings):
            raise PrunewiseError(f"method '{self.name}' takes {self.settings.__name__} settings, "
                                 f"got {type(value).__name__}")
        return value

    def describe(self) -> dict:
        """The row as plain data (``prunewise methods --json``)."""
        return {"name": self.name, "kind": self.kind, "summary": self.summary,
                "docs": self.docs, "needs_data": self.needs_data,
                "loop_recalibrate": self.loop_recalibrate if self.kind == UNSTRUCTURED else None,
                "allocation": self.allocation if self.kind == UNSTRUCTURED else None,
                "one_shot": self.one_shot if self.kind == UNSTRUCTURED else None,
                "settings": {f.name: {"default": f.default, "help": f.metadata.get("help", "")}
                             for f in fields(self.settings)}}


_DOC = "docs/methods.md"

TABLE: list[Method] = [
    # unstructured: mask scorers on the shared engine (prunewise.masking)
    Method("fvw", UNSTRUCTURED, "FVW (CIKM 2023): adversarial weight attack + path-integrated "
           "attribution, |A * w|", f"{_DOC}#fvw", "prunewise.unstructured.fvw:scorer", FVWSettings,
           loop_recalibrate=True),
    Method("magnitude", UNSTRUCTURED, "global magnitude |w|", f"{_DOC}#baselines",
           "prunewise.unstructured.baselines:magnitude_scorer", needs_data=False, one_shot=True),
    Method("taylor", UNSTRUCTURED, "first-order Taylor |w * dL/dw|, one gradient per iteration",
           f"{_DOC}#baselines", "prunewise.unstructured.baselines:taylor_scorer"),
    Method("random", UNSTRUCTURED, "uniform random scores (seeded)", f"{_DOC}#baselines",
           "prunewise.unstructured.baselines:random_scorer", needs_data=False, one_shot=True),
    Method("obd", UNSTRUCTURED, "optimal brain damage with empirical-Fisher curvature, "
           "0.5 * F * w^2 (ours)", f"{_DOC}#baselines", "prunewise.unstructured.baselines:obd_scorer",
           loop_recalibrate=True),
    Method("wanda", UNSTRUCTURED, "Wanda (ICLR 2024): |w| times the norm of its input feature, "
           "per output row", f"{_DOC}#post-training-peers", "prunewise.unstructured.posttrain:wanda_scorer",
           allocation="row", one_shot=True),
    Method("obs", UNSTRUCTURED, "OBS / SparseGPT saliency w^2 / [H^-1]_jj from each layer's "
           "input Gram matrix, per output row", f"{_DOC}#post-training-peers",
           "prunewise.unstructured.posttrain:obs_scorer", allocation="row", one_shot=True),
    Method("sparsegpt", UNSTRUCTURED, "SparseGPT (ICML 2023): adaptive masks per column "
           "block with OBS weight updates, layer by layer", f"{_DOC}#sparsegpt",
           "prunewise.unstructured.sparsegpt:sparsegpt_solver", SparseGPTSettings,
           allocation="uniform", one_shot=True),
    Method("exactobs", UNSTRUCTURED, "ExactOBS (Optimal Brain Compression, NeurIPS 2022): "
           "per output row, one weight at a time with the exact OBS update of the rest",
           f"{_DOC}#exactobs", "prunewise.unstructured.sparsegpt:exactobs_solver",
           ExactOBSSettings, allocation="global", one_shot=True),
    # structured: (configure, select) pairs on the shared engine (prunewise.structured)
    Method("sliming", STRUCTURED, "SLIMING (Neural Networks 2025): singular-value configuration "
           "+ GEM nuclear-norm selection", f"{_DOC}#sliming", "prunewise.structured.baselines:sliming_pair",
           SlimingSettings, needs_data=False),
    Method("l1", STRUCTURED, "L1-uniform: the same fraction of every group, largest L1 norms",
           f"{_DOC}#baselines", "prunewise.structured.baselines:l1_pair", needs_data=False),
    Method("random", STRUCTURED, "uniform configuration, random channels (seeded)",
           f"{_DOC}#baselines", "prunewise.structured.baselines:random_pair", needs_data=False),
    Method("chip", STRUCTURED, "uniform configuration, CHIP leave-one-out nuclear norm of the "
           "feature maps", f"{_DOC}#baselines", "prunewise.structured.baselines:chip_pair"),
    Method("sliming-l1", STRUCTURED, "SLIMING's configuration with L1 selection (separates its "
           "two steps)", f"{_DOC}#baselines", "prunewise.structured.baselines:sliming_l1_pair",
           SlimingSettings, needs_data=False),
]


def names(kind: str) -> tuple[str, ...]:
    """The names of every method of ``kind``, in table order."""
    checks.choice("method kind", kind, KINDS)
    return tuple(m.name for m in TABLE if m.kind == kind)


def get(name: str, kind: str) -> Method:
    """The row of method ``name`` of ``kind``; PrunewiseError naming the choices otherwise."""
    for m in TABLE:
        if m.name == name and m.kind == kind:
            return m
    raise PrunewiseError(f"unknown {kind} method {name!r}; choose one of: "
                         f"{', '.join(names(kind))}")


def setting_names() -> dict[str, list[str]]:
    """Every method-specific setting -> the methods that have it (the command line refuses one
    given for a method without it)."""
    out: dict[str, list[str]] = {}
    for m in TABLE:
        for f in fields(m.settings):
            out.setdefault(f.name, []).append(m.name)
    return out


def setting_fields(kind: str) -> dict[str, Any]:
    """One dataclass field per method-specific setting of ``kind``'s methods (the first
    method's, when two share a name): what the command line turns into options."""
    out: dict[str, Any] = {}
    for m in TABLE:
        if m.kind == kind:
            for f in fields(m.settings):
                out.setdefault(f.name, f)
    return out
