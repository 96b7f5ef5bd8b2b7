"""Layer-by-layer calibration: what repair, Wanda, OBS and SparseGPT read a layer's inputs
through, at a cost linear in depth.

A :class:`Walk` visits the layers of a model in the order its forward pass reaches them, in
*groups* of layers that read the same input tensor (a transformer's query, key and value
projections; its gate and up projections), and gives, batch by batch, every layer's input in
the model as it is at that moment: a caller that changes a group's weights before asking for
the next group's inputs sees them flow on, as SparseGPT and layer-wise repair need.

When the model has a stack of repeated blocks (:func:`find_blocks`: the children of one
``nn.ModuleList`` or ``nn.Sequential`` that the forward pass calls one after another, each
feeding the next, as a language model's decoder layers or a plain CNN's layers are, and
several such lists chained when one's last block feeds the next one's first, as a ResNet's
stages are), the
calibration batches' inputs to the current block are cached: a layer inside a block is read
by running that block alone on the cache, and the cache moves on by running the block once
when the walk leaves it (SparseGPT's and llm-compressor's scheme). Cost grows linearly with
depth and memory holds one block's activations of the calibration set; the block's extra
arguments (attention mask, rotary position embeddings) are those the first block received.
The stack is used only after a check that running it block by block on one batch gives
exactly the output of the whole model's own pass; otherwise, and for every layer outside the
stack, a layer's inputs come from the whole model's pass, stopped once the group is read.

Every rank under torchrun reads every batch: the walk computes the single-process numbers.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from . import device, utils
from .errors import PrunewiseError


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what it wanted has been seen."""


def _first(out):
    """The hidden state a block returns: the tensor itself or the first of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _hidden(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    got = kwargs.get("hidden_states")
    return got if isinstance(got, torch.Tensor) else None


def _candidates(model: nn.Module) -> list[tuple[str, list[str]]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            prefix = f"{name}." if name else ""
            out.append((name, [prefix + c for c, _ in m.named_children()]))
    return sorted(out, key=lambda c: -len(c[1]))


@torch.no_grad()
def find_blocks(model: nn.Module, x) -> list[str]:
    """The names of the model's stack of repeated blocks (module notes), the longest found on
    the example batch ``x``; [] when it has none."""
    found = stacks(model, x)
    return found[0] if found else []


@torch.no_grad()
def stacks(model: nn.Module, x) -> list[list[str]]:
    """Every stack of blocks of ``model`` on ``x``, longest first: each ``nn.ModuleList`` /
    ``nn.Sequential`` whose children are called once each, one feeding the next, and the chains
    of such lists where one's last block feeds the next one's first (a ResNet's stages, one
    after another), lists nested inside another's block left out."""
    cands = _candidates(model)
    seen: dict[str, list] = {n: [] for _, names in cands for n in names}
    tick = iter(range(1 << 62))

    def hook(module, args, kwargs, out, n):
        seen[n].append((_hidden(args, kwargs), _first(out), next(tick)))

    handles = [model.get_submodule(n).register_forward_hook(
        lambda mod, a, k, o, n=n: hook(mod, a, k, o, n), with_kwargs=True) for n in seen]
    try:
        utils.call(model, x)
    finally:
        for h in handles:
            h.remove()
    passing = []
    for _, names in cands:
        calls = [seen[n] for n in names]
        if any(len(c) != 1 or c[0][0] is None or c[0][1] is None for c in calls):
            continue
        if all(calls[i][0][1] is calls[i + 1][0][0] for i in range(len(calls) - 1)):
            passing.append(names)
    top = [c for c in passing if not any(c[0].startswith(m + ".") for o in passing for m in o)]
    top.sort(key=lambda c: seen[c[0]][0][2])
    chains: list[list[str]] = []
    for c in top:
        if chains and seen[chains[-1][-1]][0][1] is seen[c[0]][0][0]:
            chains[-1] = chains[-1] + c
        else:
            chains.append(list(c))
    out = chains + [c for c in passing if c not in chains]
    return sorted(out, key=lambda c: -len(c))


class Walk:
    """The layers ``names`` of ``model`` in forward order and groups, with their inputs on the
    calibration ``data`` (a re-iterable of ``(x, y)`` batches); see the module notes.

    ``groups`` lists the groups; :meth:`inputs` yields, per batch, ``{layer: input}`` for one
    group. Groups must be asked for in order (the block cache only moves forward)."""

    def __init__(self, model: nn.Module, data, names: list[str], *, blocks: bool = True):
        self.model, self.data = model, data
        first = next(iter(data), None)
        if first is None:
            raise PrunewiseError("calibration data is empty")
        self.dev = device.of(model)
        x0 = device.to(first[0], self.dev)
        one = utils.take(x0, slice(0, 1))   # one sample finds and checks the stack
        self.blocks = []
        for stack in (stacks(model, one) if blocks else []):   # the longest that checks out
            self.blocks = stack
            if self._exact(one):
                break
            self.blocks = []
        self.groups = self._grouped(names, one)   # one sample: it holds every layer's input
        reached = {n for g in self.groups for n in g}
        missing = [n for n in names if n not in reached]
        if missing:
            raise PrunewiseError(f"the forward pass never reached layer '{missing[0]}'")
        self.at, self.cache = -1, None

    # ---- layout ------------------------------------------------------------------------------

    def block_of(self, layer: str) -> int:
        """The index of the block that holds ``layer`` (-1: outside the stack)."""
        for i, b in enumerate(self.blocks):
            if layer.startswith(b + "."):
                return i
        return -1

    @torch.no_grad()
    def _grouped(self, names: list[str], x) -> list[list[str]]:
        """``names`` in forward order, consecutive layers that read one tensor grouped (layers
        the pass never reaches are left out)."""
        order: list[tuple[str, int]] = []
        held = []

        def hook(module, args, n):
            if all(n != o for o, _ in order):
                order.append((n, id(args[0])))
                held.append(args[0])   # held, so that no id is reused
        handles = [self.model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: hook(m, a, n)) for n in names]
        try:
            utils.call(self.model, x)
        finally:
            for h in handles:
                h.remove()
        groups: list[list[str]] = []
        last = None
        for n, key in order:
            where = (key, self.block_of(n))
            if groups and where == last:
                groups[-1].append(n)
            else:
                groups.append([n])
            last = where
        return groups

    @torch.no_grad()
    def _exact(self, x) -> bool:
        """Whether running the stack block by block on ``x`` gives the whole pass's output."""
        want = {}
        last = self.model.get_submodule(self.blocks[-1])
        h = last.register_forward_hook(lambda m, a, o: want.setdefault("out", _first(o)))
        try:
            utils.call(self.model, x)
        finally:
            h.remove()
        (args, kwargs), = self._capture([x])
        for b in self.blocks:
            args = (self._run(b, args, kwargs),) + tuple(args[1:])
        got = args[0]
        ref = want.get("out")
        return ref is not None and got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-5,
                                                                             atol=1e-6)

    # ---- the cache ---------------------------------------------------------------------------

    def _capture(self, batches) -> list[tuple[tuple, dict]]:
        """The arguments the first block receives on each batch."""
        out = []

        def hook(module, args, kwargs):
            kwargs = {k: v for k, v in kwargs.items()
                      if k not in ("past_key_values", "past_key_value", "use_cache")}
            if not args and isinstance(kwargs.get("hidden_states"), torch.Tensor):
                args = (kwargs.pop("hidden_states"),)   # the hidden state goes first
            out.append((tuple(args), kwargs))
            raise _Stop
        h = self.model.get_submodule(self.blocks[0]).register_forward_pre_hook(hook,
                                                                               with_kwargs=True)
        try:
            for x in batches:
                try:
                    utils.call(self.model, x)
                except _Stop:
                    pass
        finally:
            h.remove()
        return out

    def _run(self, block: str, args: tuple, kwargs: dict) -> torch.Tensor:
        return _first(self.model.get_submodule(block)(*args, **kwargs))

    @torch.no_grad()
    def _move_to(self, index: int) -> None:
        """Advance the cache to the inputs of block ``index``."""
        while self.at < index:
            if self.at < 0:
                self.cache = self._capture(device.to(b[0], self.dev) for b in self.data)
            else:
                block = self.blocks[self.at]
                self.cache = [((self._run(block, a, k),) + tuple(a[1:]), k)
                              for a, k in self.cache]
            self.at += 1

    # ---- inputs ------------------------------------------------------------------------------

    @torch.no_grad()
    def inputs(self, group: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Per calibration batch, the input of every layer of ``group`` (one of :attr:`groups`)
        in the model as it is now."""
        index = self.block_of(group[0])
        seen: dict[str, torch.Tensor] = {}

        def hook(module, args, n):
            seen[n] = args[0]
            if len(seen) == len(group):
                raise _Stop
        handles = [self.model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: hook(m, a, n)) for n in group]
        try:
            if index >= 0:
                self._move_to(index)
                runs = ((lambda a=a, k=k: self._run(self.blocks[index], a, k))
                        for a, k in self.cache)
            else:
                runs = ((lambda x=b[0]: utils.call(self.model, device.to(x, self.dev)))
                        for b in self.data)
            for run in runs:
                seen.clear()
                try:
                    run()
                except _Stop:
                    pass
                if len(seen) != len(group):
                    missing = [n for n in group if n not in seen]
                    raise PrunewiseError(f"the forward pass never reached layer '{missing[0]}'")
                yield dict(seen)
        finally:
            for h in handles:
                h.remove()
