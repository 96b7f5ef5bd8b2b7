"""SLIMING: singular-value-driven automated filter pruning (docs/methods.md, section SLIMING).

>>> pruned, plan = prunewise.sliming.prune(model, x, macs=0.5)

SLIMING is one (configure, select) pair run by the structured engine
(:func:`prunewise.structured.prune`):

1. groups from Torch-Pruning's dependency graph; per group R_g (rows = channels) and its
   singular values (:mod:`.spectrum`);
2. step (i): one global threshold on the normalized singular values, bisected on the exact
   MACs / params / channel count of the pruned architecture (:mod:`.config`);
3. step (ii): GEM, greedy nuclear-norm selection of the kept channels (:mod:`.gem`);
4. surgery through Torch-Pruning (:mod:`prunewise.surgery`): a new, physically smaller model.
"""
from __future__ import annotations

import torch
from torch import nn

from ... import settings
from ...methods import SlimingSettings
from .. import engine as structured
from ..engine import Analysis
from .config import configure, plan_counts
from .gem import EXACT_MAX, greedy_exact, greedy_fast, nuclear_norm, select, select_group
from .spectrum import gram, normalized, singular_values

__all__ = ["select", "prune", "analyze", "plan_counts", "configure", "greedy_exact", "greedy_fast",
           "nuclear_norm", "singular_values", "gram", "normalized", "EXACT_MAX", "select_group"]


def analyze(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None, *,
            spectra: bool = True) -> Analysis:
    """Trace ``model`` (in place: pass a copy if it must stay untouched), enumerate its groups,
    build every prunable group's R and singular values (``spectra``), and the exact cost model."""
    return structured.analyze(model, example_inputs, ignored_layers, matrices=spectra,
                              spectrum=singular_values if spectra else None)


def prune(model: nn.Module, example_inputs: torch.Tensor, *, macs: float | None = None,
          params: float | None = None, channels: float | None = None, normalize: str = SlimingSettings.normalize,
          min_channels: int = settings.Structured.min_channels, ignored_layers=None, round_to: int | None = None,
          min_ratio: float = SlimingSettings.min_ratio):
    """SLIMING: a NEW smaller model under exactly one budget, and its :class:`ChannelPlan`.

    ``macs`` / ``params``: fraction in (0, 1) of the original's; ``channels``: total kept
    channels over the prunable groups (an int) or a fraction. ``ignored_layers`` (modules of
    ``model``) keep their output channels. The input model is left untouched. Runs with one
    intra-op thread (restored afterwards): tracing and the small eigenproblems are faster so.
    ``min_ratio`` keeps at least that fraction of every group (0 = the paper's method; see
    :func:`prunewise.sliming.config.configure`); ``round_to`` rounds every group's count up to
    a multiple of it (capped at the group's size).
    """
    def step_i(a: Analysis):
        return plan_counts(a, macs=macs, params=params, channels=channels, normalize=normalize,
                           min_channels=min_channels, min_ratio=min_ratio, round_to=round_to)

    meta = {"method": "sliming", "normalize": normalize, "min_channels": min_channels,
            "min_ratio": min_ratio, "budget": {"macs": macs, "params": params, "channels": channels}}
    return structured.prune(model, example_inputs, step_i, select_group,
                            ignored_layers=ignored_layers, spectrum=singular_values, meta=meta)
