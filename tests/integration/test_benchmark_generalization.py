"""Smoke run of ``python -m benchmarks.generalization`` at its smallest sizes (2 training objects, 1 procedural and 1
zoo held-out object at 32², 4 steps): every stage runs for real (Blender, ``lift3d fit``, ``lift3d evaluate``, the
sphere baseline) and the results file and the learning curve are written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from configs import ROOT
from lightning_modules.launch.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # idle ~70 s (renders ~10 s, 4 steps, 3 evaluations of 2 objects, the sphere)

FIGURES = ("psnr", "chamfer", "fscore@0.1")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("generalization")
    cmd = [sys.executable, "-m", "benchmarks.generalization", "--out", str(out), "--train-objects", "2",
           "--held-out", "1", "--zoo", "1", "--steps", "4", "--checkpoints", "2", "--train-resolution", "32",
           "--eval-resolution", "32", "--views", "6", "--samples", "2", "--mesh-resolution", "32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, WANDB_MODE="offline"))
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return {"out": out, "stdout": proc.stdout, "doc": json.loads((out / "generalization.json").read_text())}


def test_the_results_hold_the_curve_both_baselines_and_the_ratios(run):
    doc = run["doc"]
    assert [c["step"] for c in doc["curve"]] == [0, 2, 4]
    for scores in [c["scores"] for c in doc["curve"]] + [doc["baselines"]["sphere"]]:
        assert set(scores) >= {"overall", "procedural", "zoo"}
        assert scores["overall"]["objects"] == 2 and scores["procedural"]["objects"] == 1
        entry = scores["overall"]
        assert 0 <= entry.get("no_surface", 0) <= entry["objects"]
        for figure in FIGURES:  # Chamfer is over the objects with a surface: none when every field is still fog
            if figure == "chamfer" and entry.get("no_surface") == entry["objects"]:
                assert entry["chamfer"] is None and entry["fscore@0.1"] == 0.0, entry
            else:
                assert np.isfinite(entry[figure]), (figure, scores)
        assert 0.0 <= entry["fscore@0.1"] <= 1.0
    assert doc["baselines"]["untrained"] == doc["curve"][0]["scores"]  # the untrained model is the step-0 checkpoint
    assert doc["trained"] == doc["curve"][-1]["scores"]
    assert 0.2 < doc["baselines"]["sphere"]["radius"] < 1.0  # objects are normalised into [-1, 1]^3
    overall = doc["ratios"]["overall"]
    untrained = doc["curve"][0]["scores"]["overall"]["fscore@0.1"]
    if untrained:
        assert overall["fscore_vs_untrained"] == pytest.approx(doc["trained"]["overall"]["fscore@0.1"] / untrained)
    else:  # an untrained field is fog (no surface, F-score 0): no ratio to it, said as none
        assert overall["fscore_vs_untrained"] is None
    assert set(overall) == {"fscore_vs_untrained", "fscore_vs_sphere"}
    assert doc["settings"]["train_objects"] == 2 and doc["settings"]["steps"] == 4
    assert all(doc["stages"][k] > 0 for k in ("render_cpu_seconds", "train_cpu_seconds", "evaluate_cpu_seconds"))
    assert "| overall | 2 |" in run["stdout"]  # the printed table


def test_the_learning_curve_png_is_written(run):
    png = run["out"] / "generalization.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 200
        assert np.asarray(img.convert("L")).std() > 5  # not blank


def test_held_out_objects_are_not_training_objects_and_step_0_is_untrained(run):
    out = run["out"]
    keys = {json.loads(line)["key"] for line in (out / "evaluation" / "step=000000" / "metrics.jsonl").open()}
    assert keys == {"procedural-1-000000", "textured_box"}
    trained = {p.stem for p in (out / "train" / "_assets").iterdir()}
    assert trained == {"procedural-0-000000", "procedural-0-000001"} and not trained & keys
    ckpts = out / "run" / "checkpoints"
    first = load_checkpoint(ckpts / "step=000000.ckpt")["state_dict"]
    last = load_checkpoint(ckpts / "step=000004.ckpt")["state_dict"]
    assert first.keys() == last.keys() and any(not torch.equal(first[k], last[k]) for k in first)
