"""Observers: human (PSNR, SSIM, MS-SSIM), machine (accuracy, agreement), cost (tokens, FLOPs) and latency
(roofline model of a forward on a device profile; kernel counting by tracing)."""
