"""Observers: human (PSNR, SSIM, MS-SSIM), machine (accuracy, agreement), and cost (tokens, FLOPs)."""
