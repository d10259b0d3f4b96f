from configs import MODEL_DIR, load_model_block


def tiny_lrm_args() -> dict:
    """The network blocks of configs/model/lrm_tiny.yaml (what the tests build)."""
    cfg = load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args
    return {k: cfg[k] for k in ("encoder", "transformer", "field", "renderer", "camera_dim")}


def field_median(module, image) -> float:
    """The median density of an (untrained) LRM ``module`` (or checkpoint path)'s field for ``image`` (an RGBA
    image's path, or a predict batch), on a 24³ grid.

    An untrained LRM's density field is fog: no ray turns half opaque, so the automatic mesh level rightly finds no
    surface. Tests of the predict plumbing mesh it at this level instead: a blobby surface through half the grid."""
    import torch

    from datamodules.images import ImageDataModule
    from geometry.mesh import query_grid
    from lightning_modules.lrm import LRMModule

    if not isinstance(module, LRMModule):
        module = LRMModule.load_from_checkpoint(str(module), map_location="cpu", weights_only=True)
    if isinstance(image, dict):
        batch = image
    else:
        (batch,) = list(ImageDataModule(str(image), input_size=64).predict_dataloader())
    with torch.no_grad():
        planes, _, _ = module.eval().reconstruct(batch)
    bound = module.net.field.bound
    return float(query_grid(lambda p: module.net.density(planes[:1], p), 24, (-bound, bound)).median())
