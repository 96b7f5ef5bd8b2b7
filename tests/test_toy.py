"""The SVGG toy: GEM finds every core filter; step (i) recovers the per-layer core counts."""
import json
import os
import subprocess
import sys

import pytest

from prunewise import toy
from prunewise.utils import one_thread


@pytest.fixture(scope="module")
def result():
    with one_thread():
        return toy.run(seed=0, complete=True)


def test_svgg_sizes_match_the_paper():
    assert toy.cores_of(toy.CHANNELS, toy.RATES) == [48, 90, 166, 307, 282]
    R, ids = toy.make_layers(0)[0]
    assert R.shape == (64, 32 * 9) and len(set(ids.tolist())) == 48


def test_gem_selects_every_core_filter(result):
    assert result["gem"] == [1.0] * 5


def test_baselines_score_lower(result):
    assert all(0 < a < 1 for a in result["random"] + result["one_shot"])
    assert result["random_total"] < 1 and result["one_shot_total"] < 1


def test_configuration_recovered_from_the_total(result):
    assert sum(result["config"]) == 893
    assert result["config"] == [48, 90, 166, 307, 282]


def test_complete_search_on_reduced_svgg(result):
    cs = result["complete_search"]
    assert cs["complete"] == [1.0] * 3 and cs["gem"] == [1.0] * 3


def test_cli_toy_svgg_json():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "prunewise", "toy", "svgg", "--seed", "1",
                        "--no-complete", "--json"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("gem", "random", "one_shot", "config"):
        assert len(res[key]) == 5
    assert res["gem"] == [1.0] * 5
    assert all(0 <= a <= 1 for a in res["random"] + res["one_shot"])
