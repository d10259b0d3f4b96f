"""Untrusted checkpoints never run code, and bad inputs stop before the work (issue 14).

A checkpoint is a pickle; one carrying a ``__reduce__`` payload that creates a marker file is handed to every command
that reads a checkpoint (``lift3d evaluate --ckpt``, ``fit --ckpt_path auto`` with it as the run's last.ckpt,
``convert-checkpoint`` on a ZeRO directory holding it, ``predict``/``validate``/``fit --ckpt_path``, a DeepSpeed
resume): the marker never appears and the command exits non-zero naming the file. Also: the resume search over
checkpoints of every name, ``lift3d predict`` into a directory that cannot be written, and ``lift3d evaluate
--model-config`` of the wrong kind.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from configs import EXPERIMENT_DIR, MODEL_DIR
from lightning_modules.launch import checkpoints, cluster
from lightning_modules.launch.cli import main

TINY = str(EXPERIMENT_DIR / "lrm_tiny.yaml")


class Payload:
    """Unpickling this object runs ``open(marker, 'w')``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def hostile(path, marker, step: int = 7) -> str:
    """A checkpoint that looks like lift3d's (step, weights, optimizer, LRM hyper-parameters) and carries a payload."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"global_step": step, "epoch": 0, "state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{}],
                "hyper_parameters": {"_class_path": "lightning_modules.lrm.LRMModule", "note": Payload(marker)}},
               path)
    return str(path)


def zero_dir(path, marker=None, in_file: str = "zero_pp_rank_0_mp_rank_00_optim_states.pt", step: int = 3) -> str:
    """A directory laid out as Lightning's DeepSpeedStrategy saves one (tag "checkpoint", ZeRO-2, 2 ranks); with
    ``marker``, ``in_file`` carries the payload."""
    tag = os.path.join(path, "checkpoint")
    os.makedirs(tag)
    with open(os.path.join(path, "latest"), "w") as f:
        f.write("checkpoint")
    files: dict[str, dict[str, Any]] = {
        "mp_rank_00_model_states.pt": {"global_step": step, "module": {"w": torch.zeros(2)}, "dp_world_size": 2},
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {"x": torch.ones(1)}},
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {"x": torch.ones(1)}}}
    for name, state in files.items():
        if marker is not None and name == in_file:
            state = dict(state, payload=Payload(marker))
        torch.save(state, os.path.join(tag, name))
    return str(path)


def exits(capsys, args) -> tuple[int | None, str]:
    """Runs ``lift3d ARGS`` in-process; (exit status, what it said)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    code = exc.value.code
    said = out.out + out.err + (code if isinstance(code, str) else "")
    return (1 if isinstance(code, str) else code), said


def test_the_payload_runs_under_a_plain_unpickle(tmp_path):
    """The fixture is armed: torch.load(weights_only=False), what the evaluation and the resume search called,
    creates the marker."""
    marker = tmp_path / "marker"
    torch.load(hostile(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_the_loader_refuses_the_payload_naming_the_file(tmp_path):
    marker = tmp_path / "marker"
    path = hostile(tmp_path / "x.ckpt", marker)
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint .*x\.ckpt: holds pickled objects that are not "
                                                          r"tensors or plain data \(it names exec\)"):
        checkpoints.load_checkpoint(path)
    assert not marker.exists()


def test_lift3d_evaluate_refuses_a_hostile_checkpoint(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = hostile(tmp_path / "x.ckpt", marker)
    code, said = exits(capsys, ["evaluate", "--ckpt", path, "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                                "--wandb-mode", "disabled"])
    assert code != 0 and path in said and "not tensors or plain data" in said
    assert not marker.exists()


def test_fit_ckpt_path_auto_refuses_a_hostile_last_ckpt_instead_of_starting_fresh(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = hostile(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    code, said = exits(capsys, ["fit", "--config", TINY, "--ckpt_path", "auto", "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert code == 2 and path in said and "none can be resumed" in said and "yet, starting fresh" not in said
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "validate", "fit"])
def test_an_explicit_ckpt_path_is_refused_naming_it(tmp_path, capsys, command):
    marker = tmp_path / "marker"
    path = hostile(tmp_path / "x.ckpt", marker)
    code, said = exits(capsys, [command, "--config", TINY, "--ckpt_path", path, "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert code == 2 and f"--ckpt_path: checkpoint {path}: holds pickled objects" in said
    assert not marker.exists()


def test_weights_only_false_is_refused(tmp_path, capsys):
    code, said = exits(capsys, ["validate", "--config", TINY, "--weights_only=false", "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path}"])
    assert code == 2 and "tensors only" in said


@pytest.mark.parametrize("in_file", ["mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"])
def test_convert_checkpoint_refuses_a_zero_directory_with_a_hostile_file(tmp_path, capsys, in_file):
    marker = tmp_path / "marker"
    ckpt = zero_dir(tmp_path / "last.ckpt", marker, in_file)
    code, said = exits(capsys, ["convert-checkpoint", ckpt, str(tmp_path / "out.ckpt")])
    assert code == 2 and os.path.join(ckpt, "checkpoint", in_file) in said and "not tensors or plain data" in said
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_a_deepspeed_resume_reads_every_zero_file_tensors_only_first(tmp_path):
    from lightning_modules.launch.deepspeed import DeepSpeedStrategy

    marker = tmp_path / "marker"
    ckpt = zero_dir(tmp_path / "hpc_ckpt_1.ckpt", marker)
    strategy = DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}})
    with pytest.raises(checkpoints.CheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: holds pickled"):
        strategy.load_checkpoint(ckpt)
    assert not marker.exists()


def test_weights_only_loads_forces_a_callers_weights_only_false(tmp_path):
    """What convert-checkpoint and the DeepSpeed resume wrap DeepSpeed's own loaders in."""
    marker = tmp_path / "marker"
    path = hostile(tmp_path / "x.ckpt", marker)
    with checkpoints.weights_only_loads(), pytest.raises(Exception, match="GLOBAL exec"):
        torch.load(path, weights_only=False)
    assert not marker.exists() and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# --- the resume search ---------------------------------------------------------------------------------------------
def _save(path, step, **extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{}], **extra}, path)


def _tear(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_resume_passes_over_a_torn_last_ckpt_to_the_intact_step_checkpoint(tmp_path):
    run, ckpts = str(tmp_path), str(tmp_path / "checkpoints")
    _save(f"{ckpts}/epoch=3-step=200.ckpt", 200)
    _save(f"{ckpts}/last.ckpt", 250)
    _tear(f"{ckpts}/last.ckpt")  # the node died while it was written
    said = []
    assert cluster.find_resume_checkpoint(run, [ckpts], report=said.append) == f"{ckpts}/epoch=3-step=200.ckpt"
    assert len(said) == 1 and f"{ckpts}/last.ckpt: cannot be read" in said[0]


def test_resume_takes_the_furthest_of_every_name_the_run_writes(tmp_path):
    run, ckpts = str(tmp_path), str(tmp_path / "checkpoints")
    _save(f"{ckpts}/last.ckpt", 100)
    _save(f"{ckpts}/epoch=1-step=150.ckpt", 150)
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{ckpts}/epoch=1-step=150.ckpt"
    zero_dir(f"{ckpts}/epoch=2-step=180.ckpt", step=180)  # a DeepSpeed save of the same callback
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{ckpts}/epoch=2-step=180.ckpt"
    _save(f"{run}/hpc_ckpt_3.ckpt", 180)  # pre-empted at that step: the exact state at the stop wins the tie
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{run}/hpc_ckpt_3.ckpt"
    torch.save({"global_step": 190, "state_dict": {}}, f"{ckpts}/epoch=2-step=180-fp32.ckpt")  # converted: no
    _save(f"{ckpts}/epoch=2-step=190.ckpt", 190)  # optimizer; the full checkpoint at its step wins
    os.utime(f"{ckpts}/epoch=2-step=190.ckpt", (1, 1))
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{ckpts}/epoch=2-step=190.ckpt"


def test_resume_refuses_to_start_fresh_over_checkpoints_it_cannot_read(tmp_path):
    run, ckpts = str(tmp_path), str(tmp_path / "checkpoints")
    _save(f"{ckpts}/last.ckpt", 250)
    _tear(f"{ckpts}/last.ckpt")
    _save(f"{run}/hpc_ckpt_2.ckpt", 260)
    _tear(f"{run}/hpc_ckpt_2.ckpt")
    zero_dir(f"{ckpts}/epoch=3-step=200.ckpt", step=200)
    os.remove(f"{ckpts}/epoch=3-step=200.ckpt/checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt")  # cut short
    with pytest.raises(cluster.ResumeError) as err:
        cluster.find_resume_checkpoint(run, [ckpts])
    message = str(err.value)
    for path in (f"{ckpts}/last.ckpt", f"{run}/hpc_ckpt_2.ckpt", f"{ckpts}/epoch=3-step=200.ckpt"):
        assert path in message
    assert "1 of 2 optimizer shard(s)" in message and "starting fresh would overwrite them" in message


def test_fit_auto_with_only_torn_checkpoints_stops_and_leaves_them(tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    _save(str(ckpts / "last.ckpt"), 250)
    _tear(str(ckpts / "last.ckpt"))
    before = (ckpts / "last.ckpt").read_bytes()
    code, said = exits(capsys, ["fit", "--config", TINY, "--ckpt_path", "auto", "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert code == 2 and str(ckpts / "last.ckpt") in said and "yet, starting fresh" not in said
    assert (ckpts / "last.ckpt").read_bytes() == before


# --- clear errors before the work ----------------------------------------------------------------------------------
def test_lift3d_predict_into_a_directory_it_cannot_write_stops_before_inference(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    from lightning_modules.lrm import LRMModule

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the output directory was checked")

    monkeypatch.setattr(LRMModule, "predict_step", no_inference)
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(tmp_path / "square.png")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "predictions"  # below a regular file: no one can create it (root included)
    code, said = exits(capsys, ["predict", "--config", TINY, "--data=datamodules.images.ImageDataModule",
                                f"--data.images={tmp_path / 'square.png'}", "--data.input_size=64",
                                f"--model.init_args.predict_dir={out}", "--trainer.logger=false",
                                "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                                f"--trainer.default_root_dir={tmp_path}"])
    assert code == 2 and f"cannot write predictions to {str(out)!r}" in said and "predict_dir" in said


def test_the_prediction_writer_checks_its_directory_when_set_up(tmp_path):
    from types import SimpleNamespace

    from lightning_modules.prediction import PredictionWriter

    (tmp_path / "a_file").write_text("")
    writer = PredictionWriter(str(tmp_path / "a_file" / "out"))
    with pytest.raises(OSError, match="cannot write predictions to"):
        writer.setup(None, SimpleNamespace(predict_dir=None), "predict")
    PredictionWriter().setup(None, SimpleNamespace(predict_dir=str(tmp_path / "new")), "predict")
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


def _lrm_checkpoint(path) -> str:
    torch.save({"global_step": 1, "state_dict": {}, "hyper_parameters": {
        "_class_path": "lightning_modules.lrm.LRMModule", "encoder": {}}}, path)
    return str(path)


def test_evaluate_refuses_a_model_config_of_another_kind_naming_it(tmp_path, capsys):
    ckpt = _lrm_checkpoint(tmp_path / "lrm.ckpt")
    wrong = str(MODEL_DIR / "one2345_tiny.yaml")
    code, said = exits(capsys, ["evaluate", "--ckpt", ckpt, "--shards", str(tmp_path / "none"), "--model-config",
                                wrong, "--out", str(tmp_path / "o"), "--wandb-mode", "disabled"])
    assert code != 0 and f"--model-config {wrong} configures lightning_modules.one2345.One2345Module" in said
    assert "LRMModule" in said and not (tmp_path / "o").exists()  # before any work


def test_evaluate_reads_an_experiment_yamls_model_block(tmp_path):
    from configs import load_model_block
    from lightning_modules.evaluation.reconstruction import read_checkpoint_settings

    ckpt = _lrm_checkpoint(tmp_path / "lrm.ckpt")
    tiny = load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args
    _, runtime = read_checkpoint_settings(ckpt, TINY)  # the experiment names ../model/lrm_tiny.yaml
    assert runtime == {"mesh_resolution": tiny["mesh_resolution"], "mesh_level": tiny["mesh_level"]}
    assert read_checkpoint_settings(ckpt, str(MODEL_DIR / "lrm_tiny.yaml"))[1] == runtime
    with pytest.raises(ValueError, match="one2345_tiny.yaml configures lightning_modules.one2345.One2345Module"):
        read_checkpoint_settings(ckpt, str(EXPERIMENT_DIR / "one2345_tiny.yaml"))


def test_evaluate_refuses_a_checkpoint_of_another_system(tmp_path):
    from lightning_modules.evaluation.reconstruction import read_checkpoint_settings

    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lightning_modules.one2345.One2345Module"}},
               tmp_path / "o.ckpt")
    with pytest.raises(ValueError, match="One2345Module checkpoint: lift3d evaluate reconstructs with LRM"):
        read_checkpoint_settings(str(tmp_path / "o.ckpt"))
