"""Evaluation metrics: geometry (Chamfer, F-score, volume IoU under the TripoSR-style protocol) and appearance
(PSNR, SSIM, LPIPS, CLIP similarity) of reconstructions against ground truth."""

from lightning_modules.metrics.geometry import (
    FSCORE_TAUS,
    align,
    cube_rotations,
    geometry_metrics,
    icp,
    is_watertight,
    mesh_metrics,
    rotation_angle_deg,
    volume_iou,
    yaw_rotations,
)
from lightning_modules.metrics.image import CLIPSimilarity, LPIPSMetric, image_metrics, mean_psnr, psnr, ssim

__all__ = [
    "FSCORE_TAUS",
    "CLIPSimilarity",
    "LPIPSMetric",
    "align",
    "cube_rotations",
    "geometry_metrics",
    "icp",
    "image_metrics",
    "is_watertight",
    "mean_psnr",
    "mesh_metrics",
    "psnr",
    "rotation_angle_deg",
    "ssim",
    "volume_iou",
    "yaw_rotations",
]
