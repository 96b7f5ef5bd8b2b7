"""Two processes on CPU (Gloo), as under ``torchrun``: identical masks on every rank and equal to
one process's, identical weights after every fine-tuning epoch, one copy of every file.

One spawned pair of processes does all the library checks (starting processes is the slow part);
one ``torchrun`` run checks the command line end to end.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from prunewise import data as D
from prunewise import checkpoints, dist, files, fvw, models, train
from prunewise.errors import PrunewiseError

SAMPLES = 96


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model():
    torch.manual_seed(0)
    return models.create("resnet20", num_classes=10, in_channels=1)


def attribution(bundle):
    return lambda: D.batches(bundle.train, bundle, 32, shuffle=True, seed=0, limit=SAMPLES)


def prune(model, bundle):
    return fvw.prune(model, attribution(bundle), sparsity=0.5, keep=0.6, samples=SAMPLES)


def digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(folder)
    assert dist.init(torch.device("cpu")) and dist.world() == 2 and dist.rank() == rank
    bundle = D.load("digits", seed=0)
    model = tiny_model()
    plan = prune(model, bundle)  # (a) each rank attacks with its half of the samples
    save_file({k: v.to(torch.uint8) for k, v in plan.masks.items()}, out / f"masks-{rank}.st")
    epochs = []  # (b) masked fine-tuning with DDP

    def on_epoch(row):
        epochs.append({"digest": digest(work), "row": row,
                       "zeros": all(bool((dict(work.named_parameters())[n][~m] == 0).all())
                                    for n, m in plan.masks.items())})

    work = plan.apply(model)
    train.fit(work, bundle, epochs=2, lr=0.02, batch_size=32, masks=plan.masks,
              progress=False, on_epoch=on_epoch)
    result = {"epochs": epochs, "final": digest(work),
              "test": train.evaluate_split(work, bundle, "test")}
    files.write_json(out / "shared" / "written.json", {"rank": rank})  # (c) rank 0 only
    checkpoints.save_model(work, out / "shared" / "model")

    def failing(tmp):
        raise OSError("disk full")
    try:  # a write that fails on rank 0 fails on every rank, no rank waits forever
        files.atomic_write(out / "shared" / "never.json", failing)
    except (OSError, PrunewiseError) as e:
        result["write_error"] = f"{type(e).__name__}: {e}"
    (out / f"result-{rank}.json").write_text(json.dumps(result))
    dist.finish()
    dist.leave(0)  # as the CLI does under torchrun


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(folder), free_port()), nprocs=2, join=True)
    return folder


def test_fvw_masks_identical_on_both_ranks_and_to_one_process(two_ranks, digits):
    m0 = load_file(two_ranks / "masks-0.st")
    m1 = load_file(two_ranks / "masks-1.st")
    assert m0.keys() == m1.keys()
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    single = prune(tiny_model(), digits)
    assert all(torch.equal(single.masks[k].to(torch.uint8), m0[k]) for k in m0)


def test_fine_tuning_ranks_hold_identical_weights_every_epoch(two_ranks):
    r0 = json.loads((two_ranks / "result-0.json").read_text())
    r1 = json.loads((two_ranks / "result-1.json").read_text())
    assert len(r0["epochs"]) == len(r1["epochs"]) == 2
    for e0, e1 in zip(r0["epochs"], r1["epochs"]):
        assert e0["digest"] == e1["digest"]
        assert e0["row"] == e1["row"]  # same loss and validation accuracy (all-reduced)
        assert e0["zeros"] and e1["zeros"]  # pruned weights exactly zero on every rank
    assert r0["final"] == r1["final"] and r0["test"] == r1["test"]


def test_only_rank_zero_writes_and_a_failed_write_fails_everywhere(two_ranks):
    shared = two_ranks / "shared"
    assert json.loads((shared / "written.json").read_text()) == {"rank": 0}
    assert sorted(p.name for p in shared.iterdir()) == ["model", "written.json"]
    assert not [p for p in shared.rglob("*") if files.TMP_MARK in p.name]
    assert checkpoints.load_model(shared / "model") is not None
    r0 = json.loads((two_ranks / "result-0.json").read_text())
    r1 = json.loads((two_ranks / "result-1.json").read_text())
    # rank 0 names the file it could not write; the other rank is told rank 0 failed
    assert r0["write_error"].startswith("PrunewiseError: could not write"), r0["write_error"]
    assert "never.json" in r0["write_error"] and "disk full" in r0["write_error"]
    assert r1["write_error"].startswith("PrunewiseError"), r1["write_error"]
    assert not (shared / "never.json").exists()


CLI_CASES = {  # the pipeline's distributed paths: attack + loop recalibration, a gradient
    # baseline, the structured command with data-driven CHIP (SLIMING's own analysis is
    # data-free: every rank computes it whole); every case recalibrates BatchNorm after pruning
    # and evaluates on the shared-out test split
    "fvw": ["prune", "fvw", "--sparsity", "0.5", "--keep", "0.6", "--samples", "96"],
    "taylor": ["prune", "fvw", "--method", "taylor", "--sparsity", "0.5", "--keep", "0.6",
               "--samples", "96"],
    "chip": ["prune", "sliming", "--method", "chip", "--macs", "0.5"],
}


def outcome(folder: Path) -> dict:
    """What must not depend on the number of processes: accuracies, sizes, masks, channels."""
    rep = json.loads((folder / "report.json").read_text())
    got = {"accuracy": rep["accuracy"], "params": rep["params"], "macs": rep["macs"],
           "counts": rep.get("counts")}
    if (folder / "masks.safetensors").is_file():
        got["masks"] = {k: v.tolist() for k, v in load_file(folder / "masks.safetensors").items()}
    return got


def test_a_rank_other_than_zero_never_removes_files(tmp_path, monkeypatch):
    """A checkpoint save on rank 1 clears no old channel plans: under torchrun rank 1 once removed
    them after rank 0 had written the new ones (seen as a missing plan.safetensors)."""
    folder = checkpoints.save_model(tiny_model(), tmp_path / "ck")   # written by "rank 0"
    plan = folder / "structure" / "0" / "plan.safetensors"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"rank 0's new plan")

    def agree(error):
        if error is not None:
            raise error
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "agree", agree)
    checkpoints.save_model(tiny_model(), folder)
    assert plan.read_bytes() == b"rank 0's new plan"


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_torchrun_cli_gives_the_one_process_result(case, digits_checkpoint, tmp_path):
    """Two processes through the command line, exactly as a user runs it, give the masks, kept
    channels and accuracies of one process (pruned and recalibrated), bit for bit."""
    from helpers import invoke

    args = [*CLI_CASES[case], str(digits_checkpoint), "--latency-repeats", "0", "--quiet",
            "--no-repair"]   # the recalibrated path; repair under torchrun: test_repair
    one = invoke(*args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "prunewise", *args, "--device", "cpu",
           "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test top-1") == 1  # printed by rank 0 only
    two = tmp_path / "two"
    assert json.loads((two / "report.json").read_text())["compute"]["world"] == 2
    assert not [p for p in two.rglob("*") if files.TMP_MARK in p.name]
    assert outcome(two) == outcome(tmp_path / "one")


def test_torchrun_bad_option_ends_every_rank(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "prunewise", "train", "resnet20",
           "--epochs", "1", "--amp", "bf16", "--device", "cpu", "--out", str(tmp_path / "m")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--amp bf16 needs a CUDA device" in res.stderr
