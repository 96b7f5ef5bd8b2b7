"""Several processes under ``torchrun``; every helper is a no-op in a single process.

``torchrun --nproc_per_node N -m prunewise ...`` sets ``WORLD_SIZE`` > 1 in the environment;
:func:`init` then joins the process group (NCCL on CUDA, Gloo on CPU). What is shared and how:

* training and fine-tuning: DistributedDataParallel; each global batch of the shuffled epoch
  order is split over the ranks (:func:`part`), so the batch size keeps its meaning;
* FVW attribution, Taylor, CHIP and evaluation: the ranks share out whole batches (or images)
  and add the results in their order (:func:`in_order`), so every rank holds exactly the
  single-process scores and selects the same masks and channels (splitting a batch would change
  floating-point sums in the last bits, and FVW's iterations turn such bits into other masks);
* BatchNorm recalibration and OBD's curvature: every rank computes them on all the samples
  (cheap next to the attack; a split batch would be normalised with other statistics);
* files: only rank 0 writes (:func:`main_writes`), the others wait for it; an error on rank 0
  while writing is raised on every rank.

A failure on one rank ends all of them: ``torchrun`` stops the other workers when one exits,
and every collective runs under a timeout (``PRUNEWISE_DIST_TIMEOUT`` seconds, default 600),
so a rank never waits forever for a peer that is gone.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as tdist

from .errors import PrunewiseError

TIMEOUT_ENV = "PRUNEWISE_DIST_TIMEOUT"


def launched() -> bool:
    """Whether this process was started as one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise PrunewiseError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return tdist.get_rank() if active() else 0


def world() -> int:
    """The number of processes (1 in a single process)."""
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank() == 0


def init(dev: torch.device) -> bool:
    """Join the process group when launched by torchrun (NCCL on CUDA, Gloo otherwise); return
    whether several processes run. Safe to call twice; a no-op in a single process."""
    if not launched() or active():
        return active()
    if not tdist.is_available():
        raise PrunewiseError("this PyTorch has no torch.distributed; run a single process")
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, "600"))
    except ValueError:
        raise PrunewiseError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds), **kwargs)
    return active()


def finish() -> None:
    """Leave the process group (at the end of a command), once every rank got there: no rank
    tears down its end while a peer still talks to it."""
    if tdist.is_available() and tdist.is_initialized():
        if active():
            tdist.barrier()
        tdist.destroy_process_group()


def leave(code: int) -> None:
    """End a process started by torchrun with ``code`` once its output is flushed, skipping the
    interpreter's shutdown (call :func:`finish` first on success). That shutdown can abort in
    the Gloo backend's threads after all work is done ("terminate called without an active
    exception"), turning a finished run into a failure. Returns at once in a process that
    torchrun did not start."""
    if not launched():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def part() -> tuple[int, int] | None:
    """``(rank, world)`` to split each batch by, or None in a single process."""
    return (rank(), world()) if active() else None


def shard(n: int) -> slice:
    """This rank's positions among ``n`` items: ``rank, rank + world, ...`` (all in one process)."""
    return slice(rank(), n, world())


def in_order(items: Iterable, compute: Callable[[Any], torch.Tensor | None],
             size: int, dtype: torch.dtype = torch.float64) -> Iterator[torch.Tensor]:
    """``compute(item)`` for every item of ``items``, yielded in order on every rank.

    Work is split by whole items (item ``i`` is computed by rank ``i % world``) and the results
    (float64 vectors of length ``size``, or None for "nothing to add") are exchanged after each
    round of ``world`` items, so every rank can combine them in the same order, with the same
    arithmetic, as one process does: the result is bit for bit the single-process one (a split
    *inside* a batch would change the floating-point sums, and an iterative method such as FVW
    turns those last-bit differences into different masks). ``dtype``: what the results travel
    as (one that holds them exactly: float32 for float32 gradients). Every rank must iterate the
    same ``items``. In one process this is ``compute`` over the items, None results skipped."""
    if not active():
        for item in items:
            out = compute(item)
            if out is not None:
                yield out
        return
    w, me = world(), rank()
    it = iter(items)
    while True:
        chunk = [x for _, x in zip(range(w), it)]
        if not chunk:
            return
        mine = compute(chunk[me]) if me < len(chunk) else None
        buf = torch.zeros(size + 1, dtype=dtype)
        if mine is not None:
            buf[0] = 1.0
            buf[1:] = mine.detach().to(device="cpu", dtype=dtype).reshape(-1)
        if tdist.get_backend() == "nccl":
            buf = buf.cuda()
        got = [torch.empty_like(buf) for _ in range(w)]
        tdist.all_gather(got, buf)
        for g in got[:len(chunk)]:
            if float(g[0]) == 1.0:
                yield g[1:]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks, computed and returned in float64 (every rank gets the
    same bits); ``t`` itself (unchanged dtype) in a single process."""
    if not active():
        return t
    # always a new buffer: all_reduce works in place, and ``t.to(float64)`` of a float64
    # tensor is ``t`` itself, so without the copy the caller's tensor would become the sum
    buf = t.detach().to(torch.float64, copy=True)
    if tdist.get_backend() == "gloo" and buf.is_cuda:  # gloo reduces CPU tensors
        buf = buf.cpu()
    buf = buf.contiguous()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(t.device)


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if active():
        tdist.barrier()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if not active():
        return
    for b in model.buffers():
        tdist.broadcast(b.data, src=0)


def agree(error: BaseException | None) -> None:
    """Raise on every rank when any rank had ``error`` (an all-reduced flag: no rank hangs
    waiting for one that failed); re-raise ``error`` itself on the rank that had it."""
    if not active():
        if error is not None:
            raise error
        return
    flag = torch.tensor([1.0 if error is not None else 0.0])
    if tdist.get_backend() == "nccl":
        flag = flag.cuda()
    tdist.all_reduce(flag, op=tdist.ReduceOp.SUM)
    if error is not None:
        raise error
    if float(flag) > 0:
        raise PrunewiseError(f"another rank failed (rank {rank()} of {world()} stops too)")


def main_writes(write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 only; the other ranks wait until it finished (and fail with it)."""
    if not active():
        write()
        return
    error = None
    if is_main():
        try:
            write()
        except Exception as e:  # reported to the other ranks, then raised here
            error = e
    agree(error)
