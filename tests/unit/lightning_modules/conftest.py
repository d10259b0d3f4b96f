from configs import MODEL_DIR, load_model_block


def tiny_lrm_args() -> dict:
    """The network blocks of configs/model/lrm_tiny.yaml (what the tests build)."""
    cfg = load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args
    return {k: cfg[k] for k in ("encoder", "transformer", "field", "renderer", "camera_dim")}
