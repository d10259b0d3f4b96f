"""What ``lift3d predict`` produces: the systems' ``predict_step`` returns :class:`Prediction` records (arrays, no
files); :class:`PredictionWriter` writes them.

Files per object, in the writer's ``output_dir`` (default: the system's ``predict_dir``), named by the object's key:

    <key>.<mesh_format>     the mesh with vertex colours (no file when the model found no surface)
    <key>.<gif|mp4>         a turntable of the mesh (LRM; ``turntable`` setting)
    <key>.views.png         the 40 source views Zero123 made, 5 rows of 8 (One-2-3-45 from a single image)
    <key>.json              the side record (One-2-3-45 from a single image: the elevation used), with ``"mesh"``: the
                            mesh's path or null

``lift3d predict`` adds a writer when the config has none (``lightning_modules.launch.cli``), so predicting writes
the same files as ever; name one in ``trainer.callbacks`` to choose the directory there instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from einops import rearrange
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from geometry.image import write_image, write_turntable
from geometry.mesh import save_mesh
from render_farm.shards import safe_output_path

SHEET_COLUMNS = 8  # views per row of <key>.views.png: the 8 views, then a row per 8 neighbours


@dataclass
class Prediction:
    """One object's prediction. ``mesh``: (vertices (V, 3), faces (F, 3), vertex colours (V, 3) in [0, 1]) or None
    when there is no surface; ``turntable``: (T, S, S, 3) uint8 frames written as ``turntable_format`` (gif, mp4);
    ``views``: (N, S, S, 3) float RGB in [0, 1], N a multiple of 8; ``record``: JSON-serialisable side facts."""

    key: str
    mesh: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]
    mesh_format: str = "glb"
    turntable: Optional[np.ndarray] = None
    turntable_format: Optional[str] = None
    views: Optional[np.ndarray] = None
    record: Optional[dict] = None


def write_prediction(prediction: Prediction, output_dir: str) -> Optional[str]:
    """Writes one object's files (module docstring) under ``output_dir``; returns the mesh's path or None. Every path
    is ``safe_output_path``'s: a key that would leave ``output_dir`` (``../x``, an absolute path) is a ValueError."""
    p, key = prediction, prediction.key
    path = None
    if p.mesh is not None:
        path = save_mesh(safe_output_path(output_dir, key, f".{p.mesh_format}"), *p.mesh)
        rank_zero_info(f"[predict] {key} → {path}")
    if p.turntable is not None:
        if p.turntable_format is None:
            raise ValueError(f"prediction {key!r} has turntable frames but no turntable_format: give gif or mp4")
        spin = write_turntable(safe_output_path(output_dir, key, f".{p.turntable_format}"), p.turntable)
        rank_zero_info(f"[predict] {key} turntable → {spin}")
    if p.views is not None:
        sheet = rearrange(p.views, "(r c) h w ch -> (r h) (c w) ch", c=SHEET_COLUMNS)
        write_image(safe_output_path(output_dir, key, ".views.png"), sheet)
    if p.record is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(safe_output_path(output_dir, key, ".json"), "w") as f:
            json.dump({**p.record, "mesh": path}, f, indent=1)
    return path


def check_output_dir(output_dir: str) -> str:
    """Creates ``output_dir`` and checks that a file can be written there, before any inference; an ``OSError`` with
    one line naming the directory and the fix otherwise. Returns the directory."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".lift3d-write-check-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write predictions to {output_dir!r} ({exc.strerror or exc}): set "
                      f"--model.init_args.predict_dir (or the PredictionWriter's output_dir) to a directory you "
                      f"can write") from None
    return output_dir


class PredictionWriter(BasePredictionWriter):
    """Writes each predict batch's :class:`Prediction` records as it comes (every rank its own batches) to
    ``output_dir``, or to the system's ``predict_dir`` when that is None."""

    def __init__(self, output_dir: Optional[str] = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict":  # before the first batch, not after the first object's inference
            check_output_dir(self.output_dir or pl_module.predict_dir)

    def write(self, predictions: Sequence[Prediction], output_dir: str) -> list[str]:
        """Writes the records; returns the paths of the meshes written."""
        return [path for p in predictions if (path := write_prediction(p, output_dir))]

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        if not isinstance(prediction, (list, tuple)) or not all(isinstance(p, Prediction) for p in prediction):
            raise TypeError(f"PredictionWriter writes lists of lightning_modules.prediction.Prediction; "
                            f"{type(pl_module).__name__}.predict_step returned {type(prediction).__name__}")
        self.write(prediction, self.output_dir or pl_module.predict_dir)
