"""ExactOBS (Optimal Brain Compression): per output row, one weight at a time with the exact
OBS update of the rest; checked against a hand computation with explicit inverses, against
SparseGPT and magnitude on the same layer, its N:M masks, and end to end on a small CNN."""
import pytest
import torch
from torch import nn

from prunewise import data as D
from prunewise import methods
from prunewise.pipeline import runs
from prunewise.unstructured import sparsegpt
from prunewise.unstructured.sparsegpt import exact_obs_matrix


def by_hand(W, H, pruned, damp=0.01):
    """ExactOBS with explicit inverses of the kept inputs' Gram block at every step: each row
    pruned all the way (its step errors recorded), the ``pruned`` smallest errors over all rows
    say how far each row goes, then each row pruned again that far."""
    W, H = W.double(), H.double().clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    rows, cols = W.shape

    def row(w, steps):
        w, kept, errs = w.clone(), list(range(cols)), []
        for _ in range(steps):
            inv = torch.linalg.inv(H[kept][:, kept])
            score = torch.stack([w[j] ** 2 / inv[i, i] for i, j in enumerate(kept)])
            i = int(score.argmin())
            errs.append(float(score[i]))
            w[kept] -= w[kept[i]] / inv[i, i] * inv[:, i]
            w[kept[i]] = 0.0
            kept.pop(i)
        return w, kept, errs

    errors = torch.tensor([row(W[r], cols)[2] for r in range(rows)])
    picked = torch.topk(errors.flatten(), pruned, largest=False).indices
    per_row = torch.bincount(picked // cols, minlength=rows)
    out, keep = torch.zeros_like(W), torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        out[r], kept, _ = row(W[r], int(per_row[r]))
        keep[r, kept] = True
    return out, keep


def test_exactobs_is_the_hand_computation_on_a_small_layer():
    torch.manual_seed(0)
    X = torch.randn(6, 40, dtype=torch.float64)
    W = torch.randn(4, 6)
    got, keep = exact_obs_matrix(W, X @ X.T, 12)
    want, want_keep = by_hand(W, X @ X.T, 12)
    assert torch.equal(keep, want_keep)                 # the same removals, in every row
    assert int((~keep).sum()) == 12 and len(set(keep.sum(1).tolist())) > 1  # rows differ
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert bool((got[~keep] == 0).all())


def test_exactobs_error_is_below_sparsegpt_and_magnitude():
    torch.manual_seed(1)
    X = torch.randn(32, 12) @ torch.randn(12, 400) + 0.1 * torch.randn(32, 400)  # correlated
    W, H = torch.randn(16, 32), None
    H = (X @ X.T).double()
    err = lambda V: float(((V - W) @ X).norm())  # noqa: E731
    exact, keep = exact_obs_matrix(W, H, 16 * 24)
    gpt, _ = sparsegpt.prune_matrix(W, H, 16 * 24, block=32)
    mag = W * (W.abs() > W.abs().flatten().kthvalue(16 * 24).values)
    assert int(keep.sum()) == 16 * 8
    assert err(exact) < err(gpt) < err(mag)


def test_exactobs_nm_pattern():
    torch.manual_seed(2)
    X = torch.randn(16, 100)
    W, keep = exact_obs_matrix(torch.randn(8, 16), (X @ X.T).double(), None, nm=(2, 4))
    assert bool((keep.reshape(8, 4, 4).sum(-1) == 2).all())
    assert bool((W[~keep] == 0).all())


def test_exactobs_prunes_a_cnn_layer_by_layer(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = next(iter(D.batches(digits.train, digits, 128)))[0]
    settings = runs.Unstructured(0.6, samples=128, track_accuracy=False, allocation="uniform")
    plans = {m: runs.prune_masks(model, digits, m, settings) for m in ("exactobs", "magnitude")}
    exact = plans["exactobs"]
    assert exact.weights is not None
    assert all(abs(v - 0.6) < 0.01 for v in exact.per_layer().values())   # uniform per layer
    with torch.no_grad():
        dense = model(x)
        errors = {m: float((p.apply(model)(x) - dense).norm()) for m, p in plans.items()}
    assert errors["exactobs"] < errors["magnitude"]
    # by default a solver takes global magnitude's per-layer counts (measured best on resnet20)
    assert methods.get("exactobs", methods.UNSTRUCTURED).allocation == "global"


def test_exactobs_settings_are_checked():
    from prunewise.errors import PrunewiseError
    with pytest.raises(PrunewiseError, match="hessian damp"):
        methods.ExactOBSSettings(hessian_damp=0.0)


def test_a_solver_with_global_allocation_takes_global_magnitudes_counts(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[2].weight.mul_(3.0)   # global magnitude keeps more of this layer
    plans = {m: runs.prune_masks(model, digits, m, runs.Unstructured(
        0.7, samples=64, track_accuracy=False, allocation="global"))
        for m in ("exactobs", "magnitude")}
    counts = {m: {n: int(k.sum()) for n, k in p.masks.items()} for m, p in plans.items()}
    assert counts["exactobs"] == counts["magnitude"]
    assert len(set(plans["exactobs"].per_layer().values())) > 1
    assert not all(torch.equal(plans["exactobs"].masks[n], plans["magnitude"].masks[n])
                   for n in counts["exactobs"])


def test_an_indefinite_gram_matrix_gets_more_damping_with_a_warning():
    from prunewise.unstructured.engine import PruningWarning
    H = torch.eye(6, dtype=torch.float64)
    H[0, 0] = -0.5    # not positive definite at 1% damping
    with pytest.warns(PruningWarning, match="used 1 "):
        W, keep = exact_obs_matrix(torch.randn(3, 6), H, 6)
    assert int((~keep).sum()) == 6 and bool(torch.isfinite(W).all())
    with pytest.raises(Exception, match="not positive definite"):
        exact_obs_matrix(torch.randn(3, 6), torch.full((6, 6), float("nan"),
                                                       dtype=torch.float64), 6)
