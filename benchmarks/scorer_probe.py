"""Probe: iterative global pruning with scores outside the library (relative magnitude, Fisher,
2nd-order), same select/recalibrate protocol as fashion_quality.py; writes JSON via --out.

    .venv/bin/python benchmarks/scorer_probe.py --ckpt benchmarks/checkpoints/resnet20-fashion-mnist-s1 \
        --scores magnitude,relmag --loop-recal 0 --out benchmarks/results/fashion/probe-relmag-s1.json
"""
import argparse, copy, json, math, time, sys
import torch, torch.nn.functional as F
from torch import nn
from prunewise import checkpoints, data as D, fvw, train

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt"); ap.add_argument("--scores", default="magnitude,taylor,fvw,fisher,obd")
ap.add_argument("--levels", default="0.8,0.9,0.95,0.98"); ap.add_argument("--keep", type=float, default=0.9)
ap.add_argument("--samples", type=int, default=512); ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--loop-recal", type=int, default=1); ap.add_argument("--alpha", type=float, default=1e-8)
ap.add_argument("--steps", type=int, default=2); ap.add_argument("--test", type=int, default=10000)
ap.add_argument("--out", default=None); ap.add_argument("--data", default="fashion-mnist")
a = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
model = checkpoints.load_model(a.ckpt).eval()
bundle = D.load(a.data)
g = torch.Generator().manual_seed(0)
idx = torch.randperm(len(bundle.train), generator=g)
attr = bundle.train.subset(idx[:a.samples]); cal = bundle.train.subset(idx[a.samples:a.samples+512])
test = bundle.test.subset(torch.arange(min(a.test, len(bundle.test))))
def bt(split, bs): return list(D.batches(split, bundle, bs))
attr_b, cal_b, test_b = bt(attr, a.bs), bt(cal, 128), bt(test, 500)
names = fvw.prunable(model)
CORRECT = False
levels = [float(v) for v in a.levels.split(",")]

def grads(work, masks, correct_only=False):
    correct_only = correct_only or CORRECT
    ps = dict(work.named_parameters()); s1 = {n: torch.zeros_like(ps[n]) for n in names}
    s2 = {n: torch.zeros_like(ps[n]) for n in names}; n_tot = 0
    work.eval()
    for x, y in attr_b:
        work.zero_grad(set_to_none=True)
        out = work(x)
        if correct_only:
            ok = out.argmax(1) == y
            if not ok.any(): continue
            out, y = out[ok], y[ok]
        loss = F.cross_entropy(out, y, reduction="sum"); loss.backward()
        for n in names:
            gg = ps[n].grad * masks[n]; s1[n] += gg; s2[n] += gg.square() / len(y)  # batch-mean grad^2 * b
        n_tot += len(y)
    work.zero_grad(set_to_none=True)
    nb = len(attr_b)
    return {n: s1[n] / n_tot for n in names}, {n: s2[n] / nb for n in names}

def score(kind, work, masks):
    ps = dict(work.named_parameters())
    w = {n: ps[n].detach() for n in names}
    if kind == "magnitude": return {n: w[n].abs() for n in names}
    if kind == "relmag":  # |w| relative to its output filter's norm (direction change under BN)
        out = {}
        for n in names:
            t = w[n].abs(); norm = w[n].flatten(1).norm(dim=1).clamp_min(1e-12) if w[n].dim() > 1 else w[n].norm()
            out[n] = t / norm.view(-1, *([1] * (t.dim() - 1)))
        return out
    if kind == "random": return {n: torch.rand(w[n].shape, generator=g) for n in names}
    if kind.startswith("fvw"):
        alpha = float(kind.split("@")[1]) if "@" in kind else a.alpha
        A, _ = fvw.attribute(work, attr_b, alpha=alpha, steps=a.steps, masks=masks)
        return {n: (A[n] * w[n]).abs() for n in names}
    global CORRECT
    CORRECT = kind.endswith("_c"); kind = kind.removesuffix("_c")
    mg, f = grads(work, masks)
    if kind == "taylor": return {n: (mg[n] * w[n]).abs() for n in names}
    if kind == "fisher": return {n: f[n] * w[n].square() for n in names}   # 0.5*F*w^2 (OBD, Fisher curvature)
    if kind == "obd": return {n: (-mg[n] * w[n] + 0.5 * f[n] * w[n].square()) for n in names}  # 2nd-order loss change
    if kind == "obdabs": return {n: (mg[n] * w[n]).abs() + 0.5 * f[n] * w[n].square() for n in names}
    raise SystemExit(kind)

def run(kind):
    work = copy.deepcopy(model)
    ps = dict(work.named_parameters())
    masks = {n: torch.ones_like(ps[n]) for n in names}
    total = sum(m.numel() for m in masks.values())
    res = {}; alive = total; t0 = time.time(); it = 0
    for lev in levels:
        target = round(total * (1 - lev))
        while alive > target:
            nxt = max(target, math.floor(alive * a.keep))
            sc = score(kind, work, masks)
            flat = torch.cat([torch.where(masks[n].bool(), sc[n], torch.full_like(sc[n], -float("inf"))).flatten() for n in names])
            keep_idx = torch.topk(flat, nxt).indices
            newm = torch.zeros_like(flat); newm[keep_idx] = 1
            off = 0
            for n in names:
                k = masks[n].numel(); masks[n] = newm[off:off+k].view_as(masks[n]); off += k
                with torch.no_grad(): ps[n].mul_(masks[n])
            alive = nxt; it += 1
            if a.loop_recal: train.recalibrate_bn(work, cal_b)
        ev = copy.deepcopy(work)
        pre = train.evaluate(ev, test_b)["top1"]
        train.recalibrate_bn(ev, cal_b)
        post = train.evaluate(ev, test_b)["top1"]
        lay = {n: round(float(masks[n].mean()), 4) for n in names}
        res[lev] = {"pruned": pre, "recal": post, "iters": it, "sec": round(time.time()-t0, 1), "density": lay}
        print(kind, lev, f"pruned {pre:.4f} recal {post:.4f} it {it} {time.time()-t0:.0f}s", flush=True)
    return res

dense = train.evaluate(model, test_b)["top1"]; print("dense", dense, flush=True)
out = {"args": vars(a), "dense": dense}
for k in a.scores.split(","):
    out[k] = run(k)
    if a.out: json.dump(out, open(a.out, "w"), indent=1)
