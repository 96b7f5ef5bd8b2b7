"""What a model is for: the one place that knows the loss and the metrics of a task.

Every part of prunewise that needs a loss (FVW's attack, Taylor, OBD, fine-tuning) or a score
(reports, model selection, bench tables, plots) asks a :class:`Task`; nothing else names a
metric. A batch is a pair ``(inputs, targets)``; what the targets are is the task's business.

Built in:

* :func:`classification` -- integer labels, cross-entropy, top-1 (primary, higher is better)
  and top-5; FVW's attack counts the correctly classified samples.
* :func:`causal_lm` -- a batch is ``(ids, ids)``; the loss is next-token cross-entropy (the
  targets are shifted inside it, padding ignored), perplexity is primary (lower is better).
* :func:`regression` -- float targets, mean squared error (primary, lower) and mean absolute
  error.
* :func:`custom` -- the user's ``loss(output, batch)`` and ``evaluate(model, batches)``.

>>> task = tasks.custom(loss=lambda out, batch: ((out - batch[1]) ** 2).mean(),
...                     evaluate=my_metrics, primary="mse", higher_is_better=False)
>>> runs.run_unstructured(model, bundle, "magnitude", runs.Unstructured(0.5), task=task)

The built-in tasks sum their figures batch by batch (:meth:`Task.totals`), so under torchrun
the ranks' shares add up to exactly the single-process numbers; a custom task's ``evaluate``
sees every batch on every rank instead.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import device, utils
from .errors import PrunewiseError


class Task:
    """The seam between prunewise and what a model is for (see the module docstring).

    ``name`` names the task in reports; ``primary`` is the metric that picks the best
    fine-tuning epoch and heads every table, ``higher_is_better`` its direction and ``title``
    how a table heading says it. ``aliases`` are extra report keys that carry the same
    per-stage scores (a classification report keeps its ``accuracy``)."""

    name = "task"
    primary = "score"
    title = "score"
    higher_is_better = True
    aliases: tuple[str, ...] = ()
    width = 0   # how many figures :meth:`totals` gives per batch (0: it gives none)

    # ---- the loss ----------------------------------------------------------------------------

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        """The mean loss of one batch ``(inputs, targets)`` (what fine-tuning minimises)."""
        total, count = self.loss_sum(output, batch)
        return total / max(count, 1)

    def loss_sum(self, output: torch.Tensor, batch) -> tuple[torch.Tensor, int]:
        """The summed loss of one batch and how many terms it sums (samples, tokens): what
        Taylor and OBD differentiate and what torchrun ranks add up."""
        raise NotImplementedError

    def attack_loss(self, output: torch.Tensor, batch) -> tuple[torch.Tensor | None, int]:
        """FVW's loss of one batch (None when nothing counts) and its count; by default the
        whole batch's :meth:`loss_sum` (docs/methods.md, "FVW beyond classifiers")."""
        return self.loss_sum(output, batch)

    # ---- the metrics -------------------------------------------------------------------------

    def totals(self, output: torch.Tensor, batch) -> tuple[float, ...] | None:
        """Additive figures of one batch (:meth:`from_totals` turns their sums into metrics);
        None for a task that evaluates whole data sets only (a custom task)."""
        return None

    def from_totals(self, totals: Sequence[float]) -> dict:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batches: Iterable) -> dict:
        """Named metrics of ``model`` on ``batches`` (the primary one among them); the model's
        train/eval mode is restored."""
        was = model.training
        model.eval()
        try:
            sums = None
            for batch in batches:
                t = self.batch_totals(model, batch)
                sums = t if sums is None else [a + b for a, b in zip(sums, t)]
        finally:
            model.train(was)
        if sums is None:
            raise PrunewiseError("evaluation set is empty")
        return self.from_totals(sums)

    @torch.no_grad()
    def batch_totals(self, model: nn.Module, batch) -> list[float]:
        """:meth:`totals` of ``model`` (in the mode it is in) on one batch, moved to its
        device: one term of :meth:`evaluate`'s sums, and what a torchrun rank sends."""
        x, y = device.pair(batch[0], batch[1], device.of(model))
        return list(self.totals(utils.forward(model, x), (x, y)))

    def show(self, model: nn.Module, bundle) -> dict | None:
        """What a report shows a person of ``model``'s behaviour on ``bundle`` (None: nothing;
        a language model: ``{"prompt", "continuation"}``, its greedy continuation of a fixed
        prompt)."""
        return None

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats ``b`` (NaN never beats anything; anything beats NaN)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b

    def worst(self) -> float:
        """A score every real score beats."""
        return -math.inf if self.higher_is_better else math.inf

    # ---- the report --------------------------------------------------------------------------

    def describe(self) -> dict:
        """What a report says about the task: ``{"task", "name", "title", "higher_is_better"}``."""
        return {"task": self.name, "name": self.primary, "title": self.title,
                "higher_is_better": self.higher_is_better}

    def keyed(self, scores: Any) -> dict:
        """``{"scores": scores}`` and the same under every alias (a report's stage scores)."""
        return {"scores": scores, **{k: scores for k in self.aliases}}

    def named(self, key: str, value: float) -> dict:
        """``{key: value}`` for a training history's score (``val``, ``best_val``), with the
        names histories had before tasks where the task had them."""
        return {key: value}

    # ---- checks ------------------------------------------------------------------------------

    def check(self, model: nn.Module, batch) -> int:
        """Refuse, before any work, a task that does not fit ``model`` and this ``(inputs,
        targets)`` batch: a loss that is not a finite scalar, targets out of range. Returns the
        width of the model's output (its last dimension), for :meth:`check_targets`."""
        x, y = batch
        dev = device.of(model)
        x, y = device.pair(x, y, dev)
        self.check_inputs(model, x)
        was = model.training
        model.eval()
        what = "the model"
        try:
            with torch.no_grad():
                out = utils.forward(model, x)
                what = "its loss"
                self.check_fit(out, y)
                loss = self.loss(out, (x, y))
        except PrunewiseError:
            raise
        except Exception as e:  # the user's loss or model failing on our batch
            raise PrunewiseError(f"task '{self.name}': {what} failed on a batch of the data: "
                                 f"{type(e).__name__}: {e}") from None
        finally:
            model.train(was)
        check_scalar(self.name, "loss", loss)
        return int(out.shape[-1]) if out.dim() else 1

    def check_inputs(self, model: nn.Module, inputs) -> None:
        """Raise PrunewiseError when ``inputs`` cannot go into ``model`` (before calling it)."""

    def check_fit(self, output: torch.Tensor, targets) -> None:
        """Raise PrunewiseError when ``targets`` cannot be scored against ``output``."""

    def check_targets(self, targets, width: int) -> None:
        """Raise PrunewiseError when a whole split's ``targets`` do not fit a model whose
        output's last dimension is ``width`` (class ids, token ids out of range)."""


def check_scalar(task: str, what: str, value) -> None:
    """Raise PrunewiseError unless ``value`` is a finite scalar tensor (a task's loss)."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 \
            or not value.dtype.is_floating_point:
        got = (f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
               if isinstance(value, torch.Tensor) else type(value).__name__)
        raise PrunewiseError(f"task '{task}': its {what} must be a scalar float tensor, got {got}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise PrunewiseError(f"task '{task}': its {what} is {float(value)} (not finite)")


def _integer_targets(task: str, targets) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point \
            or targets.dtype == torch.bool or targets.dtype.is_complex:
        kind = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise PrunewiseError(f"task '{task}' needs integer targets, got {kind}")
    return targets


class Classification(Task):
    """Integer class labels scored against ``batch x classes`` logits."""

    name = "classification"
    primary = "top1"
    title = "top-1"
    higher_is_better = True
    aliases = ("accuracy",)
    width = 4

    def loss(self, output, batch):
        return F.cross_entropy(output, batch[1])

    def loss_sum(self, output, batch):
        return F.cross_entropy(output, batch[1], reduction="sum"), len(batch[1])

    def named(self, key, value):
        return {key: value, f"{key}_top1": value}

    def attack_loss(self, output, batch):
        """The summed cross-entropy of the correctly classified samples (None when there is
        none), and their number: FVW's counting rule."""
        targets = batch[1]
        ok = output.argmax(dim=1) == targets
        k = int(ok.sum())
        if k == 0:
            return None, 0
        return F.cross_entropy(output[ok], targets[ok], reduction="sum"), k

    def totals(self, output, batch):
        targets = batch[1]
        loss = float(F.cross_entropy(output, targets, reduction="sum"))
        top = output.topk(min(5, output.shape[1]), dim=1).indices
        correct1 = int((top[:, 0] == targets).sum())
        correct5 = int((top == targets[:, None]).any(dim=1).sum())
        return len(targets), correct1, correct5, loss

    def from_totals(self, totals):
        n, correct1, correct5, loss = totals
        n = int(n)
        if n == 0:
            raise PrunewiseError("evaluation set is empty")
        return {"top1": int(correct1) / n, "top5": int(correct5) / n, "loss": loss / n, "n": n}

    def check_fit(self, output, targets):
        _integer_targets(self.name, targets)
        if output.dim() != 2:
            raise PrunewiseError(f"task 'classification': the model's output has shape "
                                 f"{tuple(output.shape)}; it must be (batch, classes) logits "
                                 f"(a language model needs tasks.causal_lm())")
        if targets.dim() != 1 or len(targets) != len(output):
            raise PrunewiseError(f"task 'classification': targets of shape "
                                 f"{tuple(targets.shape)} for outputs {tuple(output.shape)}; "
                                 f"give one class id per sample")
        self.check_targets(targets, output.shape[1])


    def check_targets(self, targets, width):
        _in_range(self.name, "class id", _integer_targets(self.name, targets), width,
                  "a model with {width} outputs")


def _in_range(task: str, what: str, ids: torch.Tensor, width: int, where: str) -> None:
    real = ids[ids != -100] if what == "token id" else ids
    if not real.numel():
        return
    low, high = int(real.min()), int(real.max())
    if low < 0 or high >= width:
        bad = high if high >= width else low
        raise PrunewiseError(f"task '{task}': {what} {bad} is out of range for "
                             + where.format(width=width))


class CausalLM(Task):
    """Next-token prediction: logits ``batch x length x vocabulary`` for ids ``batch x
    length``; position t is scored on token t + 1. ``pad_id`` (and -100) targets are ignored."""

    name = "causal_lm"
    primary = "perplexity"
    title = "perplexity"
    higher_is_better = False
    width = 4

    def __init__(self, pad_id: int | None = None):
        if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int)):
            raise PrunewiseError(f"causal_lm pad_id must be an integer or None, got {pad_id!r}")
        self.pad_id = pad_id

    def _pairs(self, output, targets):
        logits = output[:, :-1].reshape(-1, output.shape[-1])
        labels = targets[:, 1:].reshape(-1)
        keep = labels != -100
        if self.pad_id is not None:
            keep &= labels != self.pad_id
        return logits, torch.where(keep, labels, torch.full_like(labels, -100)), keep

    def loss(self, output, batch):
        logits, labels, _ = self._pairs(output, batch[1])
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)

    def loss_sum(self, output, batch):
        logits, labels, keep = self._pairs(output, batch[1])
        return (F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum"),
                int(keep.sum()))

    def totals(self, output, batch):
        logits, labels, keep = self._pairs(output, batch[1])
        nll = float(F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum"))
        correct = int(((logits.argmax(-1) == labels) & keep).sum())
        return len(batch[1]), int(keep.sum()), nll, correct

    def from_totals(self, totals):
        n, tokens, nll, correct = totals
        if int(tokens) == 0:
            raise PrunewiseError("evaluation set is empty (no token to predict)")
        mean = nll / tokens
        return {"perplexity": math.exp(min(mean, 700.0)), "loss": mean,
                "accuracy": int(correct) / int(tokens), "tokens": int(tokens), "n": int(n)}

    #: Tokens of the fixed prompt (the start of the first test sequence) and of its continuation.
    PROMPT, CONTINUE = 32, 32

    @torch.no_grad()
    def show(self, model, bundle):
        """The greedy continuation of the first test sequence's first tokens (at most half of
        it), decoded with the data's tokenizer, or as UTF-8 bytes without one."""
        test = getattr(getattr(bundle, "test", None), "x", None)
        if not isinstance(test, torch.Tensor) or test.dim() != 2 or not len(test):
            return None
        length = int(test.shape[1])
        start = min(self.PROMPT, length // 2)
        ids = test[:1, :start].to(device.of(model))
        was = model.training
        model.eval()
        try:
            for _ in range(min(self.CONTINUE, length - start)):
                nxt = utils.forward(model, ids)[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt.to(ids.dtype)], 1)
        finally:
            model.train(was)
        ids = ids[0].tolist()
        decode = getattr(getattr(bundle, "tokenizer", None), "decode", None)
        text = decode if decode is not None else (
            lambda t: bytes(i for i in t if 0 <= i < 256).decode("utf-8", "replace"))
        return {"prompt": text(ids[:start]), "continuation": text(ids[start:])}

    def check_fit(self, output, targets):
        _integer_targets(self.name, targets)
        if output.dim() != 3 or targets.dim() != 2 or output.shape[:2] != targets.shape:
            raise PrunewiseError(f"task 'causal_lm': the model's output has shape "
                                 f"{tuple(output.shape)} for targets {tuple(targets.shape)}; it "
                                 f"needs (batch, length, vocabulary) logits for (batch, length) "
                                 f"token ids (a batch is (ids, ids))")
        if targets.shape[1] < 2:
            raise PrunewiseError("task 'causal_lm': sequences need at least two tokens")
        self.check_targets(targets, output.shape[-1])

    def check_targets(self, targets, width):
        _in_range(self.name, "token id", _integer_targets(self.name, targets), width,
                  "the model's vocabulary of {width}")

    def check_inputs(self, model, inputs):
        """Input ids beyond the first embedding's rows (the vocabulary) are refused."""
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        if emb is not None and isinstance(ids, torch.Tensor) and not ids.dtype.is_floating_point:
            _in_range(self.name, "token id", ids, emb.num_embeddings,
                      "the model's vocabulary of {width}")


class Regression(Task):
    """Float targets; mean squared error per sample (primary, lower is better) and mean absolute
    error. An output of shape ``(batch, 1)`` meets targets of shape ``(batch,)``."""

    name = "regression"
    primary = "mse"
    title = "MSE"
    higher_is_better = False
    width = 3

    @staticmethod
    def _match(output, targets):
        if not isinstance(targets, torch.Tensor) or not targets.dtype.is_floating_point:
            kind = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise PrunewiseError(f"task 'regression' needs float targets, got {kind}")
        if output.shape != targets.shape and output.numel() == targets.numel():
            output = output.reshape(targets.shape)
        if output.shape != targets.shape:
            raise PrunewiseError(f"task 'regression': the model's output has shape "
                                 f"{tuple(output.shape)} but the targets {tuple(targets.shape)}")
        return output, targets.to(output.dtype)

    def loss_sum(self, output, batch):
        out, y = self._match(output, batch[1])
        per = (out - y).square().reshape(len(y), -1).mean(dim=1)
        return per.sum(), len(y)

    def totals(self, output, batch):
        out, y = self._match(output, batch[1])
        d = (out - y).reshape(len(y), -1)
        return len(y), float(d.square().mean(dim=1).sum()), float(d.abs().mean(dim=1).sum())

    def from_totals(self, totals):
        n, se, ae = totals
        if int(n) == 0:
            raise PrunewiseError("evaluation set is empty")
        return {"mse": se / n, "mae": ae / n, "n": int(n)}

    def check_fit(self, output, targets):
        self._match(output, targets)


class Custom(Task):
    """The user's own loss and metrics (see :func:`custom`)."""

    name = "custom"

    def __init__(self, loss: Callable, evaluate: Callable, primary: str,
                 higher_is_better: bool, name: str = "custom", title: str | None = None):
        if not callable(loss) or not callable(evaluate):
            raise PrunewiseError("tasks.custom needs a loss callable and an evaluate callable")
        if not isinstance(primary, str) or not primary:
            raise PrunewiseError(f"tasks.custom: primary must name one of evaluate's metrics, "
                                 f"got {primary!r}")
        if not isinstance(higher_is_better, bool):
            raise PrunewiseError(f"tasks.custom: higher_is_better must be True or False, got "
                                 f"{higher_is_better!r}")
        if not isinstance(name, str) or not name:
            raise PrunewiseError(f"tasks.custom: name must be a non-empty string, got {name!r}")
        self.user_loss, self.user_evaluate = loss, evaluate
        self.primary, self.higher_is_better = primary, higher_is_better
        self.name, self.title = name, title or primary

    def loss(self, output, batch):
        return self.user_loss(output, batch)

    def loss_sum(self, output, batch):
        n = utils.batch_size(batch[0])
        return self.user_loss(output, batch) * n, n

    def evaluate(self, model, batches):
        was = model.training
        model.eval()
        dev = device.of(model)
        try:
            with torch.no_grad():
                got = self.user_evaluate(model, (device.pair(x, y, dev) for x, y in batches))
        except PrunewiseError:
            raise
        except Exception as e:
            raise PrunewiseError(f"task '{self.name}': its evaluate raised "
                                 f"{type(e).__name__}: {e}") from None
        finally:
            model.train(was)
        return self.checked(got)

    def checked(self, got) -> dict:
        """``got`` as ``{name: float}`` holding the primary metric, else PrunewiseError."""
        if not isinstance(got, dict) or not got:
            raise PrunewiseError(f"task '{self.name}': evaluate must return a dict of named "
                                 f"numbers, got {type(got).__name__}")
        out = {}
        for k, v in got.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise PrunewiseError(f"task '{self.name}': evaluate's {k!r} is "
                                     f"{type(v).__name__}, not a number")
            out[k] = float(v)
        if self.primary not in out:
            raise PrunewiseError(f"task '{self.name}': evaluate returned {sorted(out)}, without "
                                 f"its primary metric '{self.primary}'")
        if math.isnan(out[self.primary]):
            raise PrunewiseError(f"task '{self.name}': its primary metric '{self.primary}' is NaN")
        return out

    def check(self, model, batch):
        width = super().check(model, batch)
        self.evaluate(model, [batch])
        return width


def classification() -> Task:
    """Classification: cross-entropy on integer labels, top-1 (primary) and top-5."""
    return Classification()


def causal_lm(pad_id: int | None = None) -> Task:
    """Causal language modelling on ``(ids, ids)`` batches: shifted next-token cross-entropy
    (``pad_id`` and -100 targets ignored), perplexity primary (lower is better)."""
    return CausalLM(pad_id)


def regression() -> Task:
    """Regression on float targets: MSE (primary, lower is better) and MAE."""
    return Regression()


def custom(*, loss: Callable, evaluate: Callable, primary: str, higher_is_better: bool,
           name: str = "custom", title: str | None = None) -> Task:
    """The user's own task: ``loss(output, batch) -> scalar tensor`` (``batch`` is ``(inputs,
    targets)`` on the model's device; the mean over the batch) and ``evaluate(model, batches)
    -> {name: number}`` with ``primary`` among the names; ``higher_is_better`` is the primary
    metric's direction."""
    return Custom(loss, evaluate, primary, higher_is_better, name, title)


def checkpoint_quality(metric: dict | None, score: float) -> dict:
    """What a checkpoint's meta says of its test ``score`` under ``metric`` (a
    :meth:`Task.describe`; None: classification): ``test_accuracy`` for a classifier, as
    checkpoints always said, else ``test_score`` and the metric."""
    if metric is None or metric.get("task") == Classification.name:
        return {"test_accuracy": score}
    return {"test_score": score, "metric": metric}


def of(task: Task | None) -> Task:
    """``task``, or classification when None (the default everywhere)."""
    if task is None:
        return Classification()
    if not isinstance(task, Task):
        raise PrunewiseError(f"task must be a prunewise.tasks.Task (tasks.classification(), "
                             f"tasks.causal_lm(), tasks.custom(...)), got {type(task).__name__}")
    return task
