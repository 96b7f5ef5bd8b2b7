"""Structured (channel) pruning: the engine (:mod:`.engine`: analysis of a model copy, budget
bisection, the configure-then-select skeleton), Torch-Pruning surgery and the exact cost model
(:mod:`.surgery`), the baselines (:mod:`.baselines`: L1-uniform, random, CHIP, SLIMING's
configuration with L1) and SLIMING itself (:mod:`.sliming`, with its SVGG toy).

The engine's API is importable from here as it was before the packages
(``prunewise.structured.prune``, ``structured.bisect``, ...).
"""
from .engine import (Analysis, Configure, Select, analyze, bisect, budget_cost, parse_budget,
                     prune, round_count, views)

__all__ = ["Analysis", "Configure", "Select", "analyze", "bisect", "budget_cost",
           "parse_budget", "prune", "round_count", "views"]
