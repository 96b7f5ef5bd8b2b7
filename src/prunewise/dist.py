"""Several processes under ``torchrun``; every helper is a no-op in a single process.

``torchrun --nproc_per_node N -m prunewise ...`` sets ``WORLD_SIZE`` > 1 in the environment;
:func:`init` then joins the process group (NCCL on CUDA, Gloo on CPU). What is shared and how:

* training and fine-tuning: DistributedDataParallel; each global batch of the shuffled epoch
  order is split over the ranks (:func:`part`), so the batch size keeps its meaning;
* FVW attribution, Taylor, CHIP and BatchNorm recalibration statistics: each rank computes on
  its shard of the samples, the sums are all-reduced in float64 (:func:`all_reduce_sum`), so
  every rank holds the same scores and selects the same masks;
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
from typing import Callable, Iterable, Iterator

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


def shard_pairs(batches: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each ``(x, y)`` batch cut to this rank's share (strided, so the ranks' shares are
    disjoint and together the whole batch)."""
    for x, y in batches:
        s = shard(len(y))
        yield x[s], y[s]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks, computed and returned in float64 (every rank gets the
    same bits); ``t`` itself (unchanged dtype) in a single process."""
    if not active():
        return t
    buf = t.detach().to(torch.float64)
    if tdist.get_backend() == "gloo" and buf.is_cuda:  # gloo reduces CPU tensors
        buf = buf.cpu()
    buf = buf.contiguous()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(t.device)


def sum_grads(params: list[torch.Tensor]) -> None:
    """Replace every parameter's ``.grad`` by its sum over the ranks (float64 sum, cast back);
    a missing gradient counts as zeros. One collective for all of them."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    total = all_reduce_sum(torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads]))
    pos = 0
    for p, g in zip(params, grads):
        k = g.numel()
        p.grad = total[pos:pos + k].view_as(p).to(dtype=p.dtype, device=p.device)
        pos += k


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
