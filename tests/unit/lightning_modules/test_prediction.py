"""Prediction records and PredictionWriter: the systems' predict_step returns arrays and writes nothing; the writer
puts the files `lift3d predict` always wrote (same names) in predict_dir; the CLI adds a writer when the config has
none."""

import json

import lightning as L
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from configs import ROOT
from lightning_modules.one2345_inference import One2345Views
from lightning_modules.prediction import Prediction, PredictionWriter, write_prediction
from tests.unit.lightning_modules.conftest import field_median
from tests.unit.lightning_modules.test_one2345_module import synthetic_batch, tiny_module

TETRA = (np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
         np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64),
         np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32))


def test_writes_mesh_turntable_views_and_record(tmp_path):
    frames = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 120, 240)])  # distinct (GIF merges repeats)
    views = np.linspace(0, 1, 40 * 4 * 4 * 3, dtype=np.float32).reshape(40, 4, 4, 3)
    p = Prediction("cup", TETRA, "ply", turntable=frames, turntable_format="gif", views=views,
                   record={"elevation_deg": 12.5, "elevation": "given", "matches": 0})
    path = write_prediction(p, str(tmp_path / "out"))
    assert path == str(tmp_path / "out" / "cup.ply")
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["cup.gif", "cup.json", "cup.ply", "cup.views.png"]
    mesh = trimesh.load(path, process=False)
    assert len(mesh.vertices) == 4 and len(mesh.faces) == 4
    with Image.open(tmp_path / "out" / "cup.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (16, 16)
    sheet = np.asarray(Image.open(tmp_path / "out" / "cup.views.png"))
    assert sheet.shape == (5 * 4, 8 * 4, 3)  # 5 rows of 8 views
    np.testing.assert_array_equal(sheet[4:8, 0:4], (views[8] * 255).round().astype(np.uint8))  # row 1 starts at 8
    assert json.loads((tmp_path / "out" / "cup.json").read_text()) == {
        "elevation_deg": 12.5, "elevation": "given", "matches": 0, "mesh": path}


def test_no_surface_writes_the_record_with_a_null_mesh(tmp_path):
    p = Prediction("empty", None, record={"elevation_deg": 0.0, "elevation": "fallback", "matches": 0})
    assert write_prediction(p, str(tmp_path)) is None
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty.json"]
    assert json.loads((tmp_path / "empty.json").read_text())["mesh"] is None


def test_turntable_frames_need_a_format(tmp_path):
    with pytest.raises(ValueError, match="'spin' has turntable frames but no turntable_format"):
        write_prediction(Prediction("spin", TETRA, turntable=np.zeros((2, 8, 8, 3), np.uint8)), str(tmp_path))


class Tetrahedra(L.LightningModule):
    """Predicts the same tetrahedron for every key of a batch (or, with ``paths``, returns file names instead)."""

    def __init__(self, predict_dir: str, paths: bool = False):
        super().__init__()
        self.predict_dir, self.paths = predict_dir, paths
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        return [f"{k}.glb" if self.paths else Prediction(k, TETRA) for k in batch["key"]]


def _predict(module, writer, tmp_path):
    data = torch.utils.data.DataLoader([{"key": ["a", "b"]}, {"key": ["c"]}], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[writer])
    return trainer.predict(module, data, return_predictions=False)


def test_writer_in_a_trainer_defaults_to_the_modules_predict_dir(tmp_path):
    _predict(Tetrahedra(str(tmp_path / "module_dir")), PredictionWriter(), tmp_path)
    assert sorted(f.name for f in (tmp_path / "module_dir").iterdir()) == ["a.glb", "b.glb", "c.glb"]
    _predict(Tetrahedra(str(tmp_path / "module_dir")), PredictionWriter(str(tmp_path / "chosen")), tmp_path)
    assert sorted(f.name for f in (tmp_path / "chosen").iterdir()) == ["a.glb", "b.glb", "c.glb"]
    with pytest.raises(TypeError, match="Tetrahedra.predict_step returned list"):
        _predict(Tetrahedra(str(tmp_path / "x"), paths=True), PredictionWriter(), tmp_path)


@pytest.fixture
def one_thread():
    """spconv's CPU kernels need one intra-op thread (networks/one2345/sparse_cnn.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one2345_predict_step_returns_meshes_and_writes_nothing(tmp_path, one_thread):
    module = tiny_module(mesh_resolution=16, mesh_format="obj", predict_dir=str(tmp_path / "never")).eval()
    (p,) = module.predict_step(synthetic_batch(size=16), 0)
    verts, faces, colours = p.mesh
    assert p.key == "obj" and p.mesh_format == "obj" and len(faces) > 0 and colours.shape == verts.shape
    assert p.turntable is None and p.views is None and p.record is None
    assert not (tmp_path / "never").exists()


def test_single_image_prediction_without_zero123_says_what_to_set():
    with pytest.raises(ValueError, match="set --model.init_args.zero123_weights"):
        One2345Views.from_pretrained(None)
    module = tiny_module()
    with pytest.raises(ValueError, match="set --model.init_args.zero123_weights"):
        module.predict_step({"key": ["photo"], "input_image": torch.ones(1, 3, 16, 16)}, 0)


def test_lift3d_predict_adds_a_writer_and_keeps_no_meshes_in_memory(tmp_path):
    """`lift3d predict` with no callbacks in the config (random tiny LRM): the writer is added, the files land in
    predict_dir under the input's name, and the Trainer does not also hold the results."""
    from lightning_modules.launch.cli import Lift3dCLI

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 60, 60, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "square.png")
    out = tmp_path / "predictions"
    config = str(ROOT / "configs" / "experiments" / "lrm_tiny.yaml")  # seed_everything: the same random model twice
    level = field_median(Lift3dCLI(run=False, args=["--config", config, "--trainer.logger=false"]).model,
                         tmp_path / "square.png")
    cli = Lift3dCLI(args=["predict", "--config", config,
                          "--data=datamodules.images.ImageDataModule", f"--data.images={tmp_path / 'square.png'}",
                          "--data.input_size=64", f"--model.init_args.predict_dir={out}",
                          "--model.init_args.mesh_resolution=16", f"--model.init_args.mesh_level={level}",
                          "--model.init_args.turntable_frames=2", "--model.init_args.turntable_size=16",
                          "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                          f"--trainer.default_root_dir={tmp_path}"])
    assert sum(isinstance(cb, PredictionWriter) for cb in cli.trainer.callbacks) == 1
    assert sorted(f.name for f in out.iterdir()) == ["square.gif", "square.glb"]
    assert cli.trainer.predict_loop.return_predictions is False
