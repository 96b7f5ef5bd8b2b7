"""Calibration and attribution data as a re-iterable source of ``(x, y)`` batches: what the
mask methods score on, what repair, Wanda and OBS read layer inputs from."""
from __future__ import annotations

from typing import Any, Callable

from .. import checks
from ..errors import PrunewiseError
from ..utils import take


class Source:
    """Re-iterable attribution data: a callable or re-iterable of ``(x, y)``, optionally
    limited to the first ``samples`` samples and filtered to some labels, and the task that
    scores it (``task``: what a gradient scorer differentiates, a :mod:`prunewise.tasks` task;
    None means classification).

    ``batches`` may be a callable returning a fresh iterable, a re-iterable (list,
    DataLoader, ...) or another Source (limits and filters combine); a one-shot iterator (a
    generator) is read into memory once, bounded by ``samples``. ``where(y)`` returns a bool
    mask of the samples to keep; batches left empty are skipped.
    """

    def __init__(self, batches, samples: int | None = None, where: Callable | None = None,
                 task: Any = None):
        checks.integer("samples", samples, 1, none=True)
        if batches is None:
            raise PrunewiseError("this method needs attribution data (batches), got None")
        if isinstance(batches, Source):
            self.task = batches.task if task is None else task
            self.base, self.samples = batches.base, batches.samples
            if samples is not None:
                self.samples = samples if self.samples is None else min(samples, self.samples)
            inner = batches.where
            self.where = where if inner is None else (
                inner if where is None else (lambda y: inner(y) & where(y)))
            return
        if not callable(batches):
            try:
                it = iter(batches)
            except TypeError:
                raise PrunewiseError(f"batches must be an iterable of (x, y) or a callable "
                                     f"returning one, got {type(batches).__name__}") from None
            if it is batches:  # a one-shot iterator: read it once (bounded by samples)
                batches = list(_limited(it, samples))
        self.base, self.samples, self.where = batches, samples, where
        self.task = task

    def filtered(self, where: Callable) -> "Source":
        """This source restricted to the samples where ``where(y)`` is True."""
        return Source(self, None, where)

    def __iter__(self):
        src = self.base() if callable(self.base) else self.base
        for x, y in _limited(iter(src), self.samples):
            if self.where is not None:
                keep = self.where(y)
                x, y = take(x, keep), y[keep]
            if len(y):
                yield x, y


def _limited(it, samples):
    left = samples
    for batch in it:
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise PrunewiseError("every batch must be a pair (x, y) of tensors") from None
        if left is not None:
            if left <= 0:
                break
            if len(y) > left:
                x, y = take(x, slice(0, left)), y[:left]
            left -= len(y)
        yield x, y
