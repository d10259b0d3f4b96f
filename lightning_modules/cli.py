"""``lift3d``: the LightningCLI entry point (fit / validate / test / predict).

    lift3d fit --config configs/experiments/lrm_paper.yaml

Models and data are chosen by ``class_path`` in the YAML (``model:`` and ``data:`` blocks); every config in
configs/ is parsed by a test. The data side is ``datamodules.shard_datamodule.ShardDataModule``; the models
(LRM, One-2-3-45) live in ``lightning_modules``.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args=None) -> None:
    LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
