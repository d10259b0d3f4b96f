"""benchmarks/peer_openlrm.py keeps running without an OpenLRM checkout: its lift3d half trains a step of the tiny
LRM through the same calls Lightning makes and reports its stages, and without a checkout it says how to get one.
(The figures come from the benchmark itself, never from this test.)"""

import json
import os

import pytest

from benchmarks import peer_openlrm
from configs import EXPERIMENT_DIR

TINY = os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml")


def test_lift3d_half_runs_a_training_step_of_the_tiny_config(tmp_path):
    out = tmp_path / "peer.json"
    result = peer_openlrm.main(["--lift3d-only", "--config", TINY, "--rounds", "1", "--warmup", "1",
                                "--memory-rounds", "1", "--threads", "1", "--device", "cpu", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["params_lift3d"] == result["params_lift3d"] > 0
    assert "speedup" not in saved  # no peer, no ratio
    stages = saved["stages_lift3d"]
    assert set(peer_openlrm.STAGES) <= set(stages)
    assert all(stages[k] >= 0 for k in peer_openlrm.STAGES)
    # the stages are a partition of the step: their sum is the step (what is outside them is bookkeeping)
    assert sum(stages[k] for k in peer_openlrm.STAGES) == pytest.approx(stages["step"], rel=1e-6)
    assert saved["peak_mem_lift3d"] > 0
    assert saved["batch"] == 1 and saved["views"] == 2 and saved["crop"] == 32
    assert saved["precision"] == "32" and saved["memory_rounds"] == 1  # lrm_tiny trains at 32-true
    assert saved["system_s_lift3d"] >= 0 and saved["minor_faults_lift3d"] >= 0 and saved["time_pinned"] is False
    assert len(saved["step_s_lift3d"]) == 2  # a timed round is A B B A: two steps of each side
    assert len(saved["matmul_probe_ms"]) == 2 and min(saved["matmul_probe_ms"]) > 0  # the machine's speed, before/after


def test_a_round_ratio_cancels_a_linear_drift_of_the_machine_speed():
    # lift3d's step takes 1.0, OpenLRM's 1.25 of work; the machine slows by 10 % more with each step it runs
    order = ["lift3d", "openlrm", "openlrm", "lift3d", "openlrm", "lift3d", "lift3d", "openlrm"]  # A B B A, B A A B
    work = {"lift3d": 1.0, "openlrm": 1.25}
    times: dict[str, list[float]] = {"lift3d": [], "openlrm": []}
    for k, side in enumerate(order):
        times[side].append(work[side] * (1 + 0.1 * k))
    assert peer_openlrm.round_ratios(times["lift3d"], times["openlrm"]) == pytest.approx([1.25, 1.25])


def test_without_a_checkout_it_says_how_to_get_one(monkeypatch, capsys):
    monkeypatch.delenv("OPENLRM_DIR", raising=False)
    with pytest.raises(SystemExit) as exc:
        peer_openlrm.main(["--config", TINY])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "git clone https://github.com/3DTopia/OpenLRM" in err and "--openlrm" in err and "OPENLRM_DIR" in err


def test_a_directory_that_is_not_openlrm_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLRM_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=str(tmp_path)) as exc:
        peer_openlrm.main(["--config", TINY])
    assert "modeling_lrm.py" in str(exc.value)


@pytest.mark.parametrize("option", ["--rounds", "--memory-rounds"])
def test_zero_rounds_is_refused_before_any_model_is_built(option, capsys):
    with pytest.raises(SystemExit) as exc:
        peer_openlrm.main(["--lift3d-only", "--config", TINY, option, "0"])
    assert exc.value.code == 2
    assert f"{option} 0: give at least 1" in capsys.readouterr().err
