"""The task seam: classification, causal language modelling, regression and a user's own task
through the whole pipeline (runs, bench, reports), and the checks that refuse a task that does
not fit before any work."""
import json
import math

import pytest
import torch
from torch import nn

from prunewise import bench, report, runs, tasks, train
from prunewise import data as D
from prunewise.errors import PrunewiseError

QUIET = dict(measurement=runs.Measurement(latency=False))


class TinyLM(nn.Module):
    """Embedding, a causal mixing layer (each position sees itself and the one before), MLP,
    logits over the vocabulary."""

    def __init__(self, vocab=12, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        h = torch.tanh(self.mix(torch.cat([h, prev], dim=-1)))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


def lm_bundle(n=96, length=10, vocab=12, seed=0):
    """Sequences that count up modulo the vocabulary from a random start (learnable)."""
    g = torch.Generator().manual_seed(seed)

    def part(k):
        start = torch.randint(0, vocab, (k, 1), generator=g)
        ids = (start + torch.arange(length)) % vocab
        return ids, ids
    return D.from_tensors(part(n), part(32), name="count-lm")


def regression_bundle(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 1, generator=g)
    x, xt = torch.randn(256, 6, generator=g), torch.randn(64, 6, generator=g)
    return D.from_tensors((x, (x @ w).squeeze(1)), (xt, (xt @ w).squeeze(1)), name="linear")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 1))


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model, bundle = TinyLM(), lm_bundle()
    train.fit(model, bundle, train.Training(epochs=8, lr=0.05, batch_size=16), augment=False,
              progress=False, task=tasks.causal_lm())
    return model, bundle


@pytest.fixture(scope="module")
def reg():
    model, bundle = mlp(), regression_bundle()
    train.fit(model, bundle, epochs=20, lr=0.02, batch_size=32, augment=False, progress=False,
              task=tasks.regression())
    return model, bundle


# ---- the metrics by hand --------------------------------------------------------------------

def test_causal_lm_perplexity_is_the_hand_computed_one_and_ignores_padding():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 0]])    # 0 pads the second sequence
    nll, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            target = int(ids[b, t + 1])
            if target == 0:
                continue
            nll -= float(torch.log_softmax(logits[b, t], -1)[target])
            count += 1
    task = tasks.causal_lm(pad_id=0)

    class Fixed(nn.Module):
        def forward(self, x):
            return logits
    got = task.evaluate(Fixed(), [(ids, ids)])
    assert got["tokens"] == count == 3
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    assert float(task.loss(logits, (ids, ids))) == pytest.approx(nll / count, rel=1e-6)
    # without a pad id every shifted position counts
    assert tasks.causal_lm().evaluate(Fixed(), [(ids, ids)])["tokens"] == 6


def test_classification_metrics_and_direction():
    out = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 0.5]])
    y = torch.tensor([0, 1, 2])

    class Fixed(nn.Module):
        def forward(self, x):
            return out
    got = tasks.classification().evaluate(Fixed(), [(torch.zeros(3, 1), y)])
    assert got["top1"] == pytest.approx(1 / 3) and got["top5"] == 1.0 and got["n"] == 3
    assert tasks.classification().better(0.9, 0.8) and tasks.regression().better(0.1, 0.2)
    assert not tasks.causal_lm().better(float("nan"), 5.0)


def test_regression_targets_keep_their_dtype_and_need_no_classes():
    b = regression_bundle()
    assert b.num_classes == 0 and b.train.y.dtype == torch.float32
    x, y = next(iter(D.batches(b.train, b, 8)))
    assert y.dtype == torch.float32 and y.shape == (8,)
    with pytest.raises(PrunewiseError, match="one kind and shape"):
        D.from_tensors((torch.randn(8, 2), torch.randn(8)), (torch.randn(4, 2), torch.arange(4)))


# ---- through the pipeline -------------------------------------------------------------------

@pytest.mark.parametrize("method,repair", [("magnitude", True), ("fvw", False),
                                           ("taylor", False), ("obd", False)])
def test_regression_runs_every_loss_method_and_reports_mse(reg, tmp_path, method, repair):
    model, bundle = reg
    settings = runs.Unstructured(sparsity=0.5, keep=0.8, samples=128,
                                 repair=runs.Repair(enabled=repair))
    pruned, plan, rep = runs.run_unstructured(model, bundle, method, settings,
                                              finetune=runs.FineTune(epochs=1),
                                              task=tasks.regression(), **QUIET)
    assert rep["metric"] == {"task": "regression", "name": "mse", "title": "MSE",
                             "higher_is_better": False}
    assert "accuracy" not in rep
    scores = rep["scores"]
    assert scores["dense"]["test"] < 0.5 and scores["finetuned"]["test"] > 0
    assert (scores["repaired"] is not None) == repair
    assert scores["recalibrated"] is None    # no BatchNorm: nothing to recalibrate
    assert "best_val" in rep["finetune"] and "best_val_top1" not in rep["finetune"]
    written = report.write(tmp_path, rep, kind="prune-unstructured")   # schema: no cap at 1
    assert "MSE pruned" in (tmp_path / "report.md").read_text()
    assert "lower is better" in (tmp_path / "report.md").read_text()
    assert written["scores"]["dense"]["test"] == scores["dense"]["test"]


def test_regression_sliming_with_finetuning(reg):
    model, bundle = reg
    _, plan, rep = runs.run_structured(model, bundle, "sliming", runs.Structured(macs=0.5),
                                       finetune=runs.FineTune(epochs=2), task=tasks.regression(),
                                       **QUIET)
    assert rep["metric"]["name"] == "mse" and rep["macs"]["ratio"] <= 0.5 + 1e-9
    assert rep["scores"]["finetuned"]["test"] < rep["scores"]["pruned"]["test"]


@pytest.mark.parametrize("method,repair", [("magnitude", True), ("fvw", False),
                                           ("taylor", False)])
def test_causal_lm_runs_and_reports_perplexity(lm, method, repair):
    model, bundle = lm
    settings = runs.Unstructured(sparsity=0.4, keep=0.8, samples=64,
                                 repair=runs.Repair(enabled=repair))
    _, plan, rep = runs.run_unstructured(model, bundle, method, settings,
                                         finetune=runs.FineTune(epochs=1, batch_size=16),
                                         task=tasks.causal_lm(), **QUIET)
    assert rep["metric"]["name"] == "perplexity" and rep["metric"]["higher_is_better"] is False
    dense = rep["scores"]["dense"]["test"]
    assert 1.0 <= dense < 12            # better than uniform guessing over 12 tokens
    assert all(v is None or v["test"] >= 1.0 for v in rep["scores"].values())


def test_causal_lm_sliming_with_finetuning(lm):
    model, bundle = lm
    _, _, rep = runs.run_structured(model, bundle, "sliming", runs.Structured(macs=0.6),
                                    finetune=runs.FineTune(epochs=2, batch_size=16),
                                    task=tasks.causal_lm(), **QUIET)
    assert rep["scores"]["finetuned"]["test"] <= rep["scores"]["pruned"]["test"]


def test_fine_tuning_keeps_the_lowest_validation_loss_epoch(reg):
    model, bundle = reg
    seen = []
    hist = train.fit(mlp(), bundle, epochs=4, lr=0.02, batch_size=32, augment=False,
                     progress=False, task=tasks.regression(), on_epoch=seen.append)
    vals = [r["val"] for r in seen]
    assert hist["best_val"] == min(vals) and hist["best_epoch"] == vals.index(min(vals)) + 1


def mse_task(**kw):
    def evaluate(model, batches):
        se = n = 0
        for x, y in batches:
            se += float(((model(x).squeeze(1) - y) ** 2).sum())
            n += len(y)
        return {"mse": se / n, "n": n}

    def loss(out, batch):
        return ((out.squeeze(1) - batch[1]) ** 2).mean()
    return tasks.custom(**{"loss": loss, "evaluate": evaluate, "primary": "mse",
                           "higher_is_better": False, **kw})


def test_custom_task_runs_and_bench_makes_its_table(reg, tmp_path):
    model, bundle = reg
    _, _, rep = runs.run_unstructured(model, bundle, "obd", runs.Unstructured(0.5, keep=0.8),
                                      task=mse_task(), **QUIET)
    assert rep["metric"]["task"] == "custom" and rep["metric"]["name"] == "mse"
    ref = tasks.regression().evaluate(model, D.batches(bundle.test, bundle, 64))["mse"]
    assert rep["scores"]["dense"]["test"] == pytest.approx(ref, rel=1e-5)
    summary = bench.run(tmp_path / "grid", bench.Grid(("magnitude", "taylor"), (0.5, 0.7), (0,)),
                        finetune=runs.FineTune(epochs=1, batch_size=32), task=mse_task(),
                        data=bundle, model=model,
                        measurement=runs.Measurement(latency=False))
    md = (tmp_path / "grid" / "grid.md").read_text()
    assert "test mse" in md and "lower is better" in md
    assert summary["metric"]["name"] == "mse" and len(summary["rows"]) == 4
    assert "dense_test_accuracy" not in summary
    cells = json.loads(json.dumps(summary["rows"]))
    assert all(r["finetuned"] > 0 for r in cells)


# ---- a task that does not fit is refused before any work ------------------------------------

def bad(**kw):
    base = dict(loss=lambda out, batch: ((out.squeeze(1) - batch[1]) ** 2).mean(),
                evaluate=lambda model, batches: {"mse": 1.0}, primary="mse",
                higher_is_better=False)
    return tasks.custom(**{**base, **kw})


@pytest.mark.parametrize("task,message", [
    (bad(loss=lambda out, batch: (out.squeeze(1) - batch[1]) ** 2), "scalar"),
    (bad(loss=lambda out, batch: out.sum() * float("nan")), "not finite"),
    (bad(loss=lambda out, batch: 1 / 0), "ZeroDivisionError"),
    (bad(evaluate=lambda model, batches: {"mse": "low"}), "not a number"),
    (bad(evaluate=lambda model, batches: {"mae": 1.0}), "primary metric 'mse'"),
    (bad(evaluate=lambda model, batches: [1.0]), "dict of named numbers"),
    (bad(evaluate=lambda model, batches: {}["x"]), "evaluate raised KeyError"),
    (tasks.classification(), "integer targets"),
])
def test_a_task_that_does_not_fit_is_one_clear_error_and_nothing_is_written(reg, tmp_path,
                                                                             task, message):
    model, bundle = reg
    with pytest.raises(PrunewiseError, match=message):
        runs.run_unstructured(model, bundle, "magnitude", runs.Unstructured(0.5), task=task,
                              **QUIET)
    out = tmp_path / "grid"
    with pytest.raises(PrunewiseError, match=message):
        bench.run(out, bench.Grid(("magnitude",), (0.5,), (0,)), task=task, data=bundle,
                  model=model, measurement=runs.Measurement(latency=False))
    assert not out.exists()


def test_ids_beyond_the_vocabulary_and_classes_out_of_range_are_refused(lm):
    model, bundle = lm
    ids = torch.full((8, 10), 40)
    wide = D.from_tensors((ids, ids), (ids, ids))
    with pytest.raises(PrunewiseError, match="token id 40 is out of range .* vocabulary of 12"):
        runs.run_unstructured(model, wide, "magnitude", runs.Unstructured(0.5),
                              task=tasks.causal_lm(), **QUIET)
    x, y = torch.randn(20, 6), torch.arange(20) % 3
    y_test = torch.tensor([0, 1, 7, 2])
    clf = nn.Linear(6, 3)
    with pytest.raises(PrunewiseError, match="class id 7 is out of range for a model with 3"):
        runs.run_structured(clf, D.from_tensors((x, y), (torch.randn(4, 6), y_test)), "l1",
                            runs.Structured(macs=0.5), **QUIET)


def test_class_groups_need_a_classification_task(reg):
    from prunewise import methods
    model, bundle = reg
    settings = runs.Unstructured(0.5, keep=0.8, options=methods.FVWSettings(class_groups=2))
    with pytest.raises(PrunewiseError, match="class groups need a classification task"):
        runs.run_unstructured(model, bundle, "fvw", settings, task=tasks.regression(), **QUIET)


def test_an_old_report_is_rendered_as_top_1(tmp_path):
    rep = {"kind": "prune-unstructured", "method": "magnitude", "seed": 0, "seconds": 1.0,
           "config": {}, "versions": {"prunewise": "0", "torch": "0", "python": "3"},
           "accuracy": {s: {"val": 0.5, "test": 0.5} for s in runs.STAGES},
           "sparsity": 0.5, "params": {"dense": 2, "pruned": 1, "ratio": 0.5, "counted": "all"},
           "macs": {"dense": 2, "pruned": 1, "ratio": 0.5, "counted": "all"},
           "latency_ms": None}
    (tmp_path / "report.json").write_text(json.dumps(rep))
    got = report.render(tmp_path)
    assert got["metric"]["title"] == "top-1" and got["scores"] == rep["accuracy"]
    assert "top-1 pruned" in (tmp_path / "report.md").read_text()
