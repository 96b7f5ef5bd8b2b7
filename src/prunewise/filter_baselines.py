"""Compatibility alias of :mod:`prunewise.filters` (the structured baselines), kept so older
imports keep working; new code should import :mod:`prunewise.filters` and
:mod:`prunewise.structured` (``surgery`` is re-exported for callers that reach it from here)."""
from . import surgery  # noqa: F401
from .filters import (METHODS, chip_scores, collect_maps, l1_select, prune,  # noqa: F401
                      random_select, uniform_counts)
