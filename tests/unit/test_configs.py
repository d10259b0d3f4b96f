"""Every Lightning YAML in configs/ parses through the `lift3d` LightningCLI parser, and its model blocks build.

(The render configs are parsed by tests/unit/render_farm/test_config.py.)"""

import glob
import os

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "configs", "experiments", "*.yaml")))
MODELS = sorted(glob.glob(os.path.join(ROOT, "configs", "model", "*.yaml")))
DATA = sorted(glob.glob(os.path.join(ROOT, "configs", "data", "*.yaml")))


class ParseOnly(LightningCLI):
    """The `lift3d` CLI's parser, without building the classes (the paper model would want the hub's weights)."""

    def instantiate_classes(self) -> None:
        pass


def parse(args):
    cli = ParseOnly(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, args=args, save_config_kwargs={"overwrite": True})
    return cli.config


def test_there_are_configs_to_check():
    names = {os.path.basename(p) for p in EXPERIMENTS + MODELS}
    assert {"lrm_paper.yaml", "lrm_small.yaml", "lrm_tiny.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_experiment_configs_parse(path):
    cfg = parse(["--config", path])
    assert cfg.model.class_path == "lightning_modules.lrm.LRMModule"
    assert cfg.data.class_path == "datamodules.shard_datamodule.ShardDataModule"
    assert cfg.trainer.gradient_clip_val == 1.0
    if os.path.basename(path) == "lrm_paper.yaml":  # the paper run: 128 GPUs × 8 = 1024
        assert cfg.trainer.num_nodes * cfg.trainer.devices * cfg.data.init_args.batch_size == 1024
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.model.init_args.lr == 4e-4 and cfg.model.init_args.warmup_steps == 3000
        assert cfg.data.init_args.include_input_in_targets


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_model_configs_build(path):
    """Each model block's options are ones its network takes (built on the meta device: no memory, no weights)."""
    from lightning_modules.networks.lrm.model import LRM

    args = yaml.safe_load(open(path))["init_args"]
    with torch.device("meta"):
        net = LRM(dict(args["encoder"], pretrained=False, checkpoint_path=None), args.get("transformer"),
                  args.get("field"), args.get("renderer"), args.get("camera_dim", 1024))
    assert sum(p.numel() for p in net.parameters()) > 0
    parse(["--model", path, "--data", DATA[0]])


@pytest.mark.parametrize("path", DATA, ids=os.path.basename)
def test_data_configs_parse(path):
    cfg = parse(["--model", MODELS[0], "--data", path])
    assert cfg.data.init_args.batch_size >= 1


def test_tiny_experiment_instantiates():
    """The tiny run builds for real (random weights, no files needed): model, data module and trainer."""
    cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", os.path.join(ROOT, "configs", "experiments", "lrm_tiny.yaml"),
                                        "--trainer.logger=false"])
    assert type(cli.model).__name__ == "LRMModule"
    assert cli.model.net.transformer.pos_embed.shape == (3 * 8 * 8, 64)
    assert cli.trainer.max_steps == 400
