import pathlib

import yaml

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"


def tiny_lrm_args() -> dict:
    """The network blocks of configs/model/lrm_tiny.yaml (what the tests build)."""
    cfg = yaml.safe_load(open(CONFIGS / "model" / "lrm_tiny.yaml"))["init_args"]
    return {k: cfg[k] for k in ("encoder", "transformer", "field", "renderer", "camera_dim")}
