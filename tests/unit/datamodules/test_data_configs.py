"""Every YAML in configs/data/ parses through LightningCLI's machinery (jsonargparse) and instantiates."""

import lightning as L
import pytest
from jsonargparse import ArgumentParser

from configs import DATA_DIR, load_block
from datamodules.shard_datamodule import ShardDataModule
from datamodules.views import finalize
from tests.unit.datamodules.conftest import write_shards

CONFIGS = sorted(DATA_DIR.glob("*.yaml"))


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)  # what LightningCLI adds
    return parser


def _instantiate(parser, cfg):
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(cfg)


def test_the_data_configs_exist():
    assert {p.name for p in CONFIGS} >= {"objaverse_lrm.yaml", "tiny.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_instantiates(path):
    parser = _parser()
    cfg = parser.parse_args(["--data", str(path)])
    dm = _instantiate(parser, cfg).data
    assert isinstance(dm, ShardDataModule)
    raw = load_block(path, "data").init_args
    for name, value in raw.items():  # every key is a real constructor argument and arrives unchanged
        assert dm.hparams[name] == value, name
    shards = str(raw["train_shards"])
    assert not shards.startswith("/") and "path/to" not in shards  # relative, no placeholder


def test_tiny_config_loads_a_batch_from_real_shards(tmp_path):
    write_shards(tmp_path / "s", n_shards=2, per_shard=2)
    parser = _parser()
    cfg = parser.parse_args(["--data", str(DATA_DIR / "tiny.yaml"), "--data.init_args.train_shards",
                             str(tmp_path / "s"), "--data.init_args.val_shards", str(tmp_path / "s")])
    dm = _instantiate(parser, cfg).data
    dm.setup("fit")
    batch = finalize(next(iter(dm.train_dataloader())))
    assert batch["input_image"].shape == (2, 3, 64, 64) and batch["target_images"].shape == (2, 2, 3, 32, 32)
    assert len(list(dm.val_dataloader())) == 2
