"""``lift3d``: the LightningCLI entry point (fit / validate / test / predict).

    lift3d fit --config configs/experiments/lrm_paper.yaml
    lift3d evaluate --ckpt last.ckpt --shards data/shards/eval24     (lightning_modules.evaluate)

Models and data are chosen by ``class_path`` in the YAML (``model:`` and ``data:`` blocks); every config in
configs/ is parsed by a test. The data side is ``datamodules.shard_datamodule.ShardDataModule``; the models
(LRM, One-2-3-45) live in ``lightning_modules``.
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args=None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "evaluate":  # not a Trainer method: its own command, over Lightning Fabric
        from lightning_modules.evaluate import main as evaluate

        evaluate(argv[1:])
        return
    LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
