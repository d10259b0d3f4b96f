"""Training, evaluation and launch of lift3d's models, one sub-package per job.

* ``networks/``   plain ``nn.Module``s (LRM, One-2-3-45, Zero123); never import Lightning
* ``lrm.py``, ``one2345.py``   the two LightningModules (systems), over ``base.py``'s ReconstructionModule;
  ``prediction.py`` writes their predictions, ``losses.py``, ``callbacks.py``, ``ema.py`` serve them, and
  ``one2345_inference.py`` is One-2-3-45's single-image front end
* ``metrics/``    image and geometry metrics (the only PSNR)
* ``evaluation/`` ``lift3d evaluate``: reconstruction, scoring, report
* ``launch/``     the ``lift3d`` CLI, SLURM launch check and pre-emption, signals, DeepSpeed, W&B tracking, the demo

Modules that moved keep their old import paths (``lightning_modules.deepspeed``, ``lightning_modules.cluster``, ...):
``config.yaml`` files saved by earlier runs name classes by those paths, so ``_MOVED`` maps each old name to its
new home and the import system hands back the same module object.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_MOVED = {
    "lightning_modules.cli": "lightning_modules.launch.cli",
    "lightning_modules.cluster": "lightning_modules.launch.cluster",
    "lightning_modules.signals": "lightning_modules.launch.signals",
    "lightning_modules.deepspeed": "lightning_modules.launch.deepspeed",
    "lightning_modules.tracking": "lightning_modules.launch.tracking",
    "lightning_modules.demo": "lightning_modules.launch.demo",
    "lightning_modules.evaluate": "lightning_modules.evaluation.cli",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new home (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


sys.meta_path.insert(0, _MovedModule())
