"""Bad files are clear errors: every file prunewise reads is checked against its schema, and every
number and shape in it against sane limits and the architecture, before anything is allocated.

* a table of crafted bad files (config.json, safetensors headers, checkpoint meta, mask plans,
  channel plans, the resume-file spec, the report.json spec): each is one PrunewiseError, one
  line, naming the file and the field;
* crafted small files with huge zero-element shapes or huge config numbers are refused inside a
  subprocess whose address space may grow by only 1 GB;
* atomic writes: a write killed half-way leaves only a recognisable temp file, which the next
  write into the folder removes; the target is untouched by a failed write.
"""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from prunewise import checkpoints, files, models, PrunewiseError, schema
from prunewise.plan import MASKS_FILE, PLAN_FILE, MaskPlan, check_masks
from prunewise.plan import PLAN_JSON, PLAN_TENSORS, ChannelPlan

TESTS = os.path.dirname(os.path.abspath(__file__))  # for helpers.py in subprocess scripts

BYTES = {"F32": 4, "I64": 8, "BOOL": 1, "U8": 1, "F16": 2, "I32": 4}


# --------------------------------------------------------------------------- crafting files
def write_st(path: Path, entries: dict, meta: dict | None = None, *, header_len=None,
             offsets: dict | None = None, raw_header: bytes | None = None) -> Path:
    """A safetensors file from ``{name: (dtype, shape)}`` with zero data, offsets computed
    honestly unless ``offsets`` overrides some; ``header_len`` / ``raw_header`` lie on purpose."""
    header, at = {}, 0
    for name, (dtype, shape) in entries.items():
        n = BYTES.get(dtype, 4) * files.numel(shape)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": (offsets or {}).get(name, [at, at + n])}
        at += n
    if meta is not None:
        header["__metadata__"] = meta
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + bytes(min(at, 1 << 24)))  # huge ones: short
    return path


def checkpoint(tmp: Path, arch: str = "resnet20") -> Path:
    ck = tmp / "ck"
    if not ck.exists():
        checkpoints.save_model(models.create(arch), ck, meta={"data": {"name": "cifar10", "image_size": 32}})
    return ck


def dense_entries(ck: Path) -> dict:
    header, _ = files.read_header(ck / checkpoints.WEIGHTS)
    return {k: (v["dtype"], v["shape"]) for k, v in header.items()}


def edit_config(tmp: Path, change) -> Path:
    ck = checkpoint(tmp)
    cfg = json.loads((ck / checkpoints.CONFIG).read_text())
    out = change(cfg)
    (ck / checkpoints.CONFIG).write_text(out if isinstance(out, str) else json.dumps(cfg))
    return ck


def with_tensor(name: str, dtype: str | None = None, shape=None, drop=False):
    """A checkpoint whose weights have ``name`` replaced (or dropped / added)."""
    def make(tmp: Path) -> Path:
        ck = checkpoint(tmp)
        entries = dense_entries(ck)
        if drop:
            entries.pop(name)
        else:
            old = entries.get(name, ("F32", [1]))
            entries[name] = (dtype or old[0], old[1] if shape is None else shape)
        write_st(ck / checkpoints.WEIGHTS, entries)
        return ck
    return make


def st_file(**kw):
    """A checkpoint whose weights file is crafted from its real entries with ``kw`` lies."""
    def make(tmp: Path) -> Path:
        ck = checkpoint(tmp)
        write_st(ck / checkpoints.WEIGHTS, dense_entries(ck), **kw)
        return ck
    return make


def cfg_case(change):
    return lambda tmp: edit_config(tmp, change)


def set_key(path: str, value):
    def change(cfg):
        *parents, last = path.split(".")
        obj = cfg
        for p in parents:
            obj = obj.setdefault(p, {})
        obj[last] = value
    return change


def load_checkpoint(make):
    def run(tmp: Path):
        checkpoints.load_model(make(tmp))
    return run


CHECKPOINT_CASES = [
    # config.json: types, ranges, known fields
    ("arch-list", cfg_case(set_key("arch", ["resnet20"])), "arch must be a string"),
    ("arch-unknown", cfg_case(set_key("arch", "nope")), "unknown model 'nope'"),
    ("meta-string", cfg_case(set_key("meta", "x")), "meta must be an object"),
    ("meta-data-string", cfg_case(set_key("meta.data", "cifar10")), "meta.data must be an object"),
    ("image-size-huge", cfg_case(set_key("meta.data.image_size", 100_000)),
     "meta.data.image_size must be an integer <= 1024"),
    ("image-size-zero", cfg_case(set_key("meta.data.image_size", 0)), "meta.data.image_size"),
    ("image-size-text", cfg_case(set_key("meta.data.image_size", "big")),
     "meta.data.image_size must be an integer"),
    ("width-mult-text", cfg_case(set_key("width_mult", "abc")), "width_mult must be a number"),
    ("width-mult-huge", cfg_case(set_key("width_mult", 1e6)), "width_mult must be a number <= 16"),
    ("width-mult-zero", cfg_case(set_key("width_mult", 0)), "width_mult must be a number > 0"),
    ("width-mult-nan", cfg_case(lambda c: json.dumps({**c, "width_mult": float("nan")})),
     "width_mult must be a number"),
    ("dropout-5", cfg_case(set_key("dropout", 5)), "dropout must be a number <= 1"),
    ("num-classes-1e7", cfg_case(set_key("num_classes", 10_000_000)),
     "num_classes must be an integer <= 100000"),
    ("num-classes-float", cfg_case(set_key("num_classes", 2.5)), "num_classes must be an integer"),
    ("num-classes-bool", cfg_case(set_key("num_classes", True)), "num_classes must be an integer"),
    ("in-channels-zero", cfg_case(set_key("in_channels", 0)), "in_channels must be an integer >= 1"),
    ("format-2", cfg_case(set_key("format", 2)), "format must be one of 1"),
    ("format-missing", cfg_case(lambda c: c.pop("format")), "format is missing"),
    ("unknown-field", cfg_case(set_key("evil", 1)), "unknown field 'evil'"),
    ("widths-list", cfg_case(set_key("widths", [1, 2])), "widths must be an object"),
    ("widths-negative", cfg_case(set_key("widths.fc", [-1, 64])), "widths.fc[0] must be an integer >= 0"),
    ("config-array", cfg_case(lambda c: "[1, 2]"), "expected a JSON object"),
    ("config-deep", cfg_case(lambda c: "[" * 100_000 + "]" * 100_000), "corrupt checkpoint config"),
    # the safetensors header, checked against the file
    ("header-longer-than-file", st_file(header_len=1 << 40), "header length"),
    ("header-not-json", st_file(raw_header=b"{nope"), "header"),
    ("header-array", st_file(raw_header=b"[1, 2, 3]"), "header is not a JSON object"),
    ("dtype-unknown", with_tensor("fc.bias", dtype="X99"), "fc.bias.dtype must be one of"),
    ("dim-negative", with_tensor("fc.bias", shape=[-10]), "fc.bias.shape[0] must be an integer >= 0"),
    ("dim-fraction", with_tensor("fc.bias", shape=[2.5]), "fc.bias.shape[0] must be an integer"),
    ("rank-9", with_tensor("fc.bias", shape=[1] * 9), "fc.bias.shape must be a list of at most 8"),
    ("fc-1e9-by-0", with_tensor("fc.weight", shape=[10**9, 0]), "fc.weight.shape[0] must be an integer <="),
    ("conv-0-by-1e9", with_tensor("conv1.weight", shape=[0, 10**9, 3, 3]), "conv1.weight.shape[1]"),
    ("bn-1e9", with_tensor("bn1.weight", shape=[10**9]), "bn1.weight.shape[0]"),
    ("offsets-past-end", st_file(offsets={"fc.bias": [0, 1 << 40]}), "fc.bias"),
    ("offsets-overlap", st_file(offsets={"fc.bias": [0, 40]}), "gap or overlap"),
    ("offsets-one-number", st_file(offsets={"fc.bias": [0]}), "fc.bias.data_offsets"),
    ("metadata-not-strings", st_file(meta={"a": 1}), "__metadata__.a must be a string"),
    # the saved shapes, checked against the architecture the config names
    ("fc-16M-by-0", with_tensor("fc.weight", shape=[1 << 24, 0]), "'fc.weight' has shape"),
    ("bn-zero-channels", with_tensor("bn1.weight", shape=[0]), "'bn1.weight' has shape [0]"),
    ("fc-wider-than-dense", with_tensor("fc.weight", shape=[11, 64]), "cannot have"),
    ("fc-rank-changed", with_tensor("fc.weight", shape=[640]), "cannot have"),
    ("fc-int-dtype", with_tensor("fc.weight", dtype="I32"), "(I32)"),
    ("tensor-missing", with_tensor("fc.bias", drop=True), "missing fc.bias"),
    ("tensor-extra", with_tensor("evil.weight", shape=[3]), "unexpected evil.weight"),
]


def mask_plan(tmp: Path) -> Path:
    folder = tmp / "mp"
    MaskPlan({"0.weight": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool),
              "1.weight": torch.tensor([1, 1, 0], dtype=torch.bool)},
             method="magnitude", meta={"settings": {}, "history": [{"iteration": 1}]}).save(folder)
    return folder


def plan_json(change, make=mask_plan, name=PLAN_FILE):
    def case(tmp: Path) -> Path:
        folder = make(tmp)
        info = json.loads((folder / name).read_text())
        change(info)
        (folder / name).write_text(json.dumps(info))
        return folder
    return case


def plan_tensors(tensors: dict, make=mask_plan, name=MASKS_FILE):
    def case(tmp: Path) -> Path:
        folder = make(tmp)
        files.write_tensors(folder / name, tensors)
        info = json.loads((folder / PLAN_JSON).read_text())   # a crafted file with a true digest
        info["digests"] = {name: files.digest(folder / name)}
        (folder / PLAN_JSON).write_text(json.dumps(info))
        return folder
    return case


def load_plan(make):
    return lambda tmp: MaskPlan.load(make(tmp))


MASK_CASES = [
    ("plan-kind-channels", plan_json(set_key("kind", "channels")), "not a mask plan"),
    ("plan-format-7", plan_json(set_key("format", 7)), "format must be one of 1"),
    ("plan-meta-string", plan_json(set_key("meta", "x")), "meta must be an object"),
    ("plan-history-string", plan_json(set_key("meta.history", "x")), "meta.history must be a list"),
    ("plan-shapes-list", plan_json(set_key("shapes", [[2, 2]])), "shapes must be an object"),
    ("plan-shape-text", plan_json(set_key("shapes.0.weight", "2x2")), "must be a list"),
    ("plan-sparsity-2", plan_json(set_key("sparsity", 2)), "sparsity must be a number <= 1"),
    ("plan-method-number", plan_json(set_key("method", 3)), "method must be a string"),
    ("mask-float", plan_tensors({"0.weight": torch.full((2, 2), 0.5),
                                 "1.weight": torch.ones(3, dtype=torch.bool)}), "'0.weight' is F32"),
    ("mask-values-2", plan_tensors({"0.weight": torch.full((2, 2), 2, dtype=torch.uint8),
                                    "1.weight": torch.ones(3, dtype=torch.bool)}), "only 0 and 1"),
    ("mask-all-zero", plan_tensors({"0.weight": torch.zeros(2, 2, dtype=torch.bool),
                                    "1.weight": torch.zeros(3, dtype=torch.bool)}), "all zero"),
    ("mask-shape-differs", plan_tensors({"0.weight": torch.ones(2, 3, dtype=torch.bool),
                                         "1.weight": torch.ones(3, dtype=torch.bool)}), "shape [2, 3]"),
    ("mask-names-differ", plan_tensors({"x": torch.ones(2, 2, dtype=torch.bool),
                                        "1.weight": torch.ones(3, dtype=torch.bool)}), "different tensors"),
]


def channel_plan(tmp: Path) -> Path:
    folder = tmp / "cp"
    ChannelPlan(keep={"a": torch.tensor([0, 2]), "b": torch.tensor([1])},
                sizes={"a": 4, "b": 3}, arch="0123456789abcdef").save(folder)
    return folder


def keep_case(a: torch.Tensor, drop_counts: bool = True):
    """A channel plan whose group 'a' keeps ``a`` (its ``counts`` entry dropped unless asked)."""
    make = plan_tensors({"a": a, "b": torch.tensor([1])}, channel_plan, PLAN_TENSORS)
    if not drop_counts:
        return make
    return lambda tmp: _drop_counts(make(tmp))


def _drop_counts(folder: Path) -> Path:
    info = json.loads((folder / PLAN_JSON).read_text())
    info.pop("counts")
    (folder / PLAN_JSON).write_text(json.dumps(info))
    return folder


def cp_json(change):
    return plan_json(change, channel_plan, PLAN_JSON)


CHANNEL_CASES = [
    ("keep-empty", keep_case(torch.tensor([], dtype=torch.long)), "non-empty"),
    ("keep-2d", keep_case(torch.tensor([[0, 1]])), "shape [1, 2]"),
    ("keep-out-of-range", keep_case(torch.tensor([0, 4])), "keeps channel 4, outside 0..3"),
    ("keep-negative", keep_case(torch.tensor([-1, 2])), "keeps channel -1"),
    ("keep-fractional", keep_case(torch.tensor([0.0, 1.5])), "integer"),
    ("keep-duplicated", keep_case(torch.tensor([1, 1])), "sorted and unique"),
    ("keep-unsorted", keep_case(torch.tensor([2, 0])), "sorted and unique"),
    ("keep-too-many", keep_case(torch.arange(5)), "at most 4"),
    ("keep-counts-differ", keep_case(torch.tensor([0, 1, 2]), drop_counts=False), "as counts says"),
    ("sizes-text", cp_json(set_key("sizes.a", "4")), "sizes.a must be an integer"),
    ("sizes-zero", cp_json(set_key("sizes.a", 0)), "sizes.a must be an integer >= 1"),
    ("sizes-huge", cp_json(set_key("sizes.a", 10**12)), "sizes.a must be an integer <="),
    ("cp-meta-list", cp_json(set_key("meta", [])), "meta must be an object"),
    ("cp-format-9", cp_json(set_key("format", 9)), "format must be one of 1"),
    ("cp-groups-differ", cp_json(set_key("sizes.c", 3)), "groups in plan.json"),
]


def load_cp(make):
    return lambda tmp: ChannelPlan.load(make(tmp))


def good_resume() -> dict:
    return {"config": json.dumps({"method": "fvw"}), "iteration": "2",
            "history": json.dumps([{"iteration": 1, "kept": 9, "sparsity": 0.1},
                                   {"iteration": 2, "kept": 8, "sparsity": 0.2}])}


def resume_case(**change):
    def run(tmp: Path):
        meta = {**good_resume(), **change}
        meta = {k: v for k, v in meta.items() if v is not None}
        schema.decode_resume(meta, str(tmp / "resume.safetensors"))
    return run


def all_zero_resume_masks(tmp: Path):
    check_masks({"w": torch.zeros(3, 3)}, str(tmp / "resume.safetensors"))


RESUME_CASES = [
    ("resume-history-not-list", resume_case(history=json.dumps({"a": 1})), "history must be a list"),
    ("resume-history-not-json", resume_case(history="[{"), "history"),
    ("resume-iteration-text", resume_case(iteration="abc"), "iteration must be a whole number"),
    ("resume-iteration-negative", resume_case(iteration="-1"), "iteration must be a whole number"),
    ("resume-config-string", resume_case(config=json.dumps("x")), "config must be an object"),
    ("resume-rows-differ", resume_case(iteration="3"), "one row per completed iteration"),
    ("resume-missing-history", resume_case(history=None), "history is missing"),
    ("resume-row-sparsity", resume_case(history=json.dumps(
        [{"iteration": 1, "sparsity": 0.1}, {"iteration": 2, "sparsity": 2}])),
     "history[1].sparsity must be a number <= 1"),
    ("resume-all-zero-masks", all_zero_resume_masks, "all zero"),
]


def good_report() -> dict:
    return {"kind": "demo", "config": {}, "seed": 0, "seconds": 1.0,
            "versions": {"prunewise": "0", "torch": "2", "python": "3"},
            "accuracy": {"dense": {"val": 0.5, "test": 0.5}}}


def report_case(change):
    def run(tmp: Path):
        rep = good_report()
        change(rep)
        schema.check_report(rep, str(tmp / "report.json"))
    return run


REPORT_CASES = [
    ("report-kind", report_case(set_key("kind", "evil")), "kind must be one of"),
    ("report-seed-missing", report_case(lambda r: r.pop("seed")), "seed is missing"),
    ("report-seed-text", report_case(set_key("seed", "x")), "seed must be an integer"),
    ("report-accuracy-1.5", report_case(set_key("accuracy.dense.test", 1.5)),
     "accuracy.dense.test must be a number <= 1"),
    ("report-seconds-negative", report_case(set_key("seconds", -1)), "seconds must be a number >= 0"),
]

CASES = ([(i, load_checkpoint(m), w) for i, m, w in CHECKPOINT_CASES]
         + [(i, load_plan(m), w) for i, m, w in MASK_CASES]
         + [(i, load_cp(m), w) for i, m, w in CHANNEL_CASES]
         + RESUME_CASES + REPORT_CASES)


def test_the_table_is_large():
    assert len(CASES) >= 40


@pytest.mark.parametrize("run, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_is_one_clear_error(tmp_path, run, words):
    with pytest.raises(PrunewiseError) as e:
        run(tmp_path)
    msg = str(e.value)
    assert words in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg
    assert str(tmp_path) in msg or "report.json" in msg, msg  # names the file


def test_good_files_still_load(tmp_path):
    """The crafted cases differ from files that load: the untouched originals."""
    checkpoints.load_model(checkpoint(tmp_path))
    assert MaskPlan.load(mask_plan(tmp_path)).kept == 4
    assert ChannelPlan.load(channel_plan(tmp_path)).counts == {"a": 2, "b": 1}
    assert schema.decode_resume(good_resume(), "r")[1] == 2
    schema.check_report(good_report())
    ck = tmp_path / "mb"
    checkpoints.save_model(models.create("mobilenetv2", width_mult=0.5, dropout=0.1), ck)
    assert checkpoints.load_model(ck).prunewise_config["width_mult"] == 0.5


def test_all_pruned_plan_loads_when_asked(tmp_path):
    folder = plan_tensors({"0.weight": torch.zeros(2, 2, dtype=torch.bool),
                           "1.weight": torch.zeros(3, dtype=torch.bool)})(tmp_path)
    assert MaskPlan.load(folder, allow_all_pruned=True).sparsity == 1.0


# --------------------------------------------------------------------------- bounded memory
def test_hostile_small_files_are_refused_within_1gb(tmp_path):
    """Each crafted file is a few MB at most; loading it runs in a subprocess whose address space
    may grow by only 1 GB (the unguarded allocations would need 4-16 GB)."""
    cases = {"fc": with_tensor("fc.weight", shape=[10**9, 0]),
             "bn": with_tensor("bn1.weight", shape=[10**9]),
             "conv": with_tensor("conv1.weight", shape=[0, 10**9, 3, 3]),
             "fc16M": with_tensor("fc.weight", shape=[1 << 24, 0]),
             "classes": cfg_case(set_key("num_classes", 10_000_000)),
             "width": cfg_case(lambda c: c.update(arch="mobilenetv2", width_mult=1e6)),
             "claims40k": st_file(offsets={"fc.bias": [0, 40000 * 40000 * 4]})}
    folders = {}
    for name, make in cases.items():
        (tmp_path / name).mkdir()
        folders[name] = str(make(tmp_path / name))
    script = textwrap.dedent(f"""
        import sys
        import torch
        from prunewise import checkpoints, files
        from prunewise.errors import PrunewiseError
        sys.path.insert(0, {str(TESTS)!r})
        from helpers import limit_address_space
        limit_address_space()
        for name, folder in {folders!r}.items():
            try:
                checkpoints.load_model(folder)
                print("LOADED", name)
            except PrunewiseError as exc:
                print("REFUSED", name, str(exc).replace(chr(10), " "))
        try:
            torch.nn.Linear(0, 10**9)
            print("UNGUARDED-LOADED")
        except (MemoryError, RuntimeError):
            print("UNGUARDED-FAILS")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=1800, env=env)  # a hang guard, not a speed limit
    assert done.returncode == 0, done.stderr[-2000:]
    for name in cases:
        assert f"REFUSED {name} " in done.stdout, done.stdout
    assert "UNGUARDED-FAILS" in done.stdout  # the limit bites: the guard is what saves us


# --------------------------------------------------------------------------- atomic writes
def tmp_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if files.TMP_MARK in p.name)


def test_killed_write_leaves_a_named_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "out.json"
    files.write_json(target, {"v": 1})
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from prunewise import checkpoints, files
        def half(tmp):
            Path(tmp).write_text('{{"v": ')
            os.kill(os.getpid(), signal.SIGKILL)
        files.atomic_write({str(target)!r}, half)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    left = tmp_names(tmp_path)
    assert len(left) == 1 and re.fullmatch(r"\.out\.json\.prunewise-tmp-\d+-\w+", left[0]), left
    assert json.loads(target.read_text()) == {"v": 1}  # the target is untouched
    # things the cleanup must leave alone: other files, a symlink, a temp of a live process
    (tmp_path / "keep.txt").write_text("k")
    (tmp_path / ".x.prunewise-tmp-1-link").symlink_to(tmp_path / "keep.txt")
    live = tmp_path / f".y.prunewise-tmp-{os.getpid()}-live"
    live.write_text("")
    # under a pid that no process can have (above the kernel's largest pid_max), so a new process
    # that happens to reuse the killed one's pid cannot make the stale file look alive
    stale = tmp_path / re.sub(r"tmp-\d+-", "tmp-4194305-", left[0])
    (tmp_path / left[0]).rename(stale)
    old = time.time() - 3600  # the killed process's file predates this process's writes
    for p in (stale, live):
        os.utime(p, (old, old))
    files.write_json(tmp_path / "other.json", {"v": 2})
    assert not stale.exists()
    assert (tmp_path / "keep.txt").read_text() == "k" and (tmp_path / ".x.prunewise-tmp-1-link").is_symlink()
    assert json.loads(target.read_text()) == {"v": 1}


def test_fresh_temp_of_another_process_is_left_alone(tmp_path):
    young = tmp_path / ".z.prunewise-tmp-999999999-abc"   # newer than this process: maybe in use
    young.write_text("")
    files.write_json(tmp_path / "a.json", {})
    assert young.exists()


def test_failed_write_keeps_target_and_permissions(tmp_path):
    target = tmp_path / "w.txt"
    files.atomic_write(target, lambda tmp: Path(tmp).write_text("old"))
    seen = []

    def fail(tmp):
        seen.append(Path(tmp).name)
        Path(tmp).write_text("new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(PrunewiseError, match=r"could not write .*w\.txt: No space left on device "
                                             r"\(left as it was\)"):
        files.atomic_write(target, fail)
    assert target.read_text() == "old" and tmp_names(tmp_path) == []
    assert seen[0].startswith(".w.txt.prunewise-tmp-")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_temp_replaced_by_symlink_is_refused(tmp_path):
    target, victim = tmp_path / "t.txt", tmp_path / "victim.txt"
    victim.write_text("safe")

    def swap(tmp):
        os.remove(tmp)
        os.symlink(victim, tmp)

    with pytest.raises(PrunewiseError, match="non-file"):
        files.atomic_write(target, swap)
    assert victim.read_text() == "safe" and not target.exists() and tmp_names(tmp_path) == []
