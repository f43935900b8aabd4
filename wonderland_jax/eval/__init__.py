"""Evaluation: image quality metrics (PSNR, SSIM, LPIPS) of rendered views against ground truth."""

from wonderland_jax.eval.image_metrics import lpips, psnr, ssim

__all__ = ["lpips", "psnr", "ssim"]
