"""Weight files the tests write for the loaders that, in real use, read downloaded weights from a local path."""

import torch


def save_tiny_clip(path) -> str:
    """A randomly initialised CLIP (transformers ``CLIPModel``, 32² images, 8² patches) and its image processor,
    saved with ``save_pretrained`` as a real CLIP checkpoint directory is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def save_random_lpips(path) -> str:
    """An LPIPS-VGG state dict with a random backbone (the format ``LPIPSLoss`` reads besides torchvision's)."""
    from lightning_modules.losses import LPIPSLoss

    torch.manual_seed(0)
    torch.save(LPIPSLoss(pretrained_backbone=False).net.state_dict(), path)
    return str(path)
