"""What earlier runs left behind still loads: a ``config.yaml`` saved before the package layout moved (old class paths
for the DeepSpeed strategy, the cluster callback, the callbacks and the module) and checkpoints with the model blocks
as plain dicts, as the code before the typed blocks saved them, as well as checkpoints of today's code."""

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from configs import DEEPSPEED_DIR, EXPERIMENT_DIR, MODEL_DIR, load_model_block
from lightning_modules.launch.cli import Lift3dCLI, main
from lightning_modules.lrm import LRMModule
from lightning_modules.networks.lrm.config import TransformerConfig
from tests.unit.lightning_modules.conftest import field_median

# lift3d fit's config.yaml (Lightning's SaveConfigCallback) from before lightning_modules/launch/ existed; the model
# blocks as given in configs/model/lrm_tiny.yaml then (plain dicts, partial)
SAVED_BEFORE_THE_MOVE = """\
# lightning.pytorch==2.5.0
seed_everything: 0
trainer:
  accelerator: cpu
  strategy:
    class_path: lightning_modules.deepspeed.DeepSpeedStrategy
    init_args:
      config: configs/deepspeed/zero2.json
  devices: 1
  num_nodes: 1
  precision: 32-true
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args:
      name: lrm_tiny
      save_dir: {run_dir}
      offline: true
      project: lift3d
  callbacks:
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    init_args:
      dirpath: {run_dir}/checkpoints
      save_last: true
      every_n_train_steps: 100
      enable_version_counter: false
  - class_path: lightning_modules.callbacks.ThroughputLogger
    init_args:
      warmup_steps: 2
  - class_path: lightning_modules.callbacks.VisualLogger
    init_args:
      every_n_steps: 100
      mesh_resolution: 64
  - class_path: lightning_modules.cluster.Preemption
  max_steps: 400
  gradient_clip_val: 1.0
  default_root_dir: {run_dir}
model:
  class_path: lightning_modules.lrm.LRMModule
  init_args:
    encoder:
      model_name: vit_base_patch16_224.dino
      img_size: 64
      pretrained: false
      overrides:
        embed_dim: 64
        depth: 2
        num_heads: 2
    transformer:
      dim: 64
      layers: 2
      heads: 4
      token_res: 8
      triplane_dim: 16
    field:
      aggregate: sum
      hidden: 32
      layers: 4
    renderer:
      num_coarse: 24
      num_fine: 24
      chunk: 65536
    camera_dim: 64
    camera_distance: 2.0
    lpips_weight: 0.1
    lpips_pretrained: false
    mask_weight: 0.1
    lr: 0.002
    warmup_steps: 10
    mesh_resolution: 64
    mesh_level: null
data:
  class_path: datamodules.shard_datamodule.ShardDataModule
  init_args:
    train_shards: data/demo/shards
    val_shards: data/demo/shards
    batch_size: 2
    num_workers: 0
    shuffle_buffer: 0
    resampled: false
    num_target_views: 4
    input_size: 64
    target_size: 32
    target_crop_size: 0
optimizer: null
lr_scheduler: null
ckpt_path: null
global_batch_size: null
"""


class BuildOnly(Lift3dCLI):
    """What `lift3d fit --config RUN/config.yaml` builds (trainer, callbacks, logger, strategy, module, data), without
    fitting."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def test_a_config_saved_before_the_move_builds_the_same_classes(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from datamodules.shard_datamodule import ShardDataModule
    from lightning_modules.callbacks import ThroughputLogger, VisualLogger
    from lightning_modules.launch.cluster import Preemption
    from lightning_modules.launch.deepspeed import DeepSpeedStrategy

    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(SAVED_BEFORE_THE_MOVE.format(run_dir=tmp_path / "run"))
    cli = BuildOnly(args=["fit", "--config", str(saved)])
    strategy = cli.trainer.strategy
    assert type(strategy) is DeepSpeedStrategy and strategy.config_path == DEEPSPEED_DIR / "zero2.json"
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    for kind in (ModelCheckpoint, ThroughputLogger, VisualLogger, Preemption):
        assert kinds.count(kind) == 1, kind
    visuals = next(cb for cb in cli.trainer.callbacks if isinstance(cb, VisualLogger))
    assert (visuals.every_n_steps, visuals.mesh_resolution) == (100, 64)
    assert isinstance(cli.trainer.logger, WandbLogger) and cli.trainer.max_steps == 400
    assert type(cli.model) is LRMModule and type(cli.datamodule) is ShardDataModule
    assert cli.model.net.transformer.pos_embed.shape == (3 * 8 * 8, 64)  # the saved blocks, over today's defaults
    assert cli.model.hparams.field["hidden"] == 32 and cli.model.hparams.field["density_bias"] == -1.0


# --- checkpoints -----------------------------------------------------------------------------------------------
def _checkpoint(path, module: L.LightningModule, hparams: dict) -> None:
    """A checkpoint as Lightning writes it (trainer.save_checkpoint), with ``hparams`` as its hyper-parameters."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(path.parent))
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"] = hparams
    torch.save(ckpt, path)


def _tiny_module(**blocks) -> LRMModule:
    torch.manual_seed(0)
    return LRMModule(**{**load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args, **blocks})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three checkpoints of the tiny LRM: built from typed blocks by today's code, by LightningCLI (``_class_path``
    and ``_instantiator`` in its hparams), and with partial plain-dict blocks as the code before the typed blocks
    saved them."""
    root = tmp_path_factory.mktemp("ckpts")
    typed = _tiny_module(transformer=TransformerConfig(dim=64, layers=2, heads=4, token_res=8, triplane_dim=16))
    _checkpoint(root / "typed.ckpt", typed, dict(typed.hparams))
    cli = Lift3dCLI(run=False, args=["--config", str(EXPERIMENT_DIR / "lrm_tiny.yaml"), "--trainer.logger=false"])
    _checkpoint(root / "cli.ckpt", cli.model, dict(cli.model.hparams))
    before = load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args
    before = {k: v for k, v in before.items() if k not in LRMModule.RUNTIME}
    old = _tiny_module()
    _checkpoint(root / "before.ckpt", old, dict(before, _class_path="lightning_modules.lrm.LRMModule",
                                                _instantiator="lightning.pytorch.cli.instantiate_module"))
    return {"typed": (root / "typed.ckpt", typed), "cli": (root / "cli.ckpt", cli.model),
            "before": (root / "before.ckpt", old)}


@pytest.mark.parametrize("name", ["typed", "cli", "before"])
def test_checkpoint_loads_with_load_from_checkpoint(checkpoints, name):
    path, module = checkpoints[name]
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]  # what LightningCLI reads on --ckpt_path
    assert all(isinstance(hparams[k], dict) for k in ("encoder", "transformer", "field", "renderer"))
    loaded = LRMModule.load_from_checkpoint(path, map_location="cpu")
    assert type(loaded) is LRMModule
    for (key, a), b in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    assert loaded.net.transformer.grad_checkpointing is False and loaded.net.field.aggregate == "sum"


@pytest.mark.parametrize("name", ["typed", "cli", "before"])
def test_lift3d_predict_runs_from_the_checkpoint(checkpoints, name, tmp_path):
    """`lift3d predict --config lrm_tiny.yaml --ckpt_path CKPT` (LightningCLI re-applies the checkpoint's hparams)."""
    path, _ = checkpoints[name]
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 60, 60, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "square.png")
    out = tmp_path / "predictions"
    main(["predict", "--config", str(EXPERIMENT_DIR / "lrm_tiny.yaml"), "--ckpt_path", str(path),
          "--data=datamodules.images.ImageDataModule", f"--data.images={tmp_path / 'square.png'}",
          "--data.input_size=64", f"--model.init_args.predict_dir={out}", "--model.init_args.mesh_resolution=24",
          f"--model.init_args.mesh_level={field_median(path, tmp_path / 'square.png')}",
          "--model.init_args.turntable=none",
          "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])
    assert (out / "square.glb").stat().st_size > 100


def test_a_saved_config_yaml_is_plain_yaml(tmp_path):
    """The config a run saves names the blocks' options as plain YAML (no Python tags): any YAML reader can diff it."""
    cli = Lift3dCLI(run=False, args=["--config", str(EXPERIMENT_DIR / "lrm_tiny.yaml"), "--trainer.logger=false"])
    dumped = cli.parser.dump(cli.config, skip_none=False)
    model = yaml.safe_load(dumped)["model"]["init_args"]
    assert model["transformer"]["grad_checkpointing"] is False and model["field"]["sampler"] == "auto"
