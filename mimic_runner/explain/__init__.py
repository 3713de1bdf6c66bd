"""Explanations as pure functions of a forward pass (Grad-CAM)."""

from mimic_runner.explain.gradcam import gap_linear_grad_cam, grad_cam, postprocess_cam

__all__ = ["gap_linear_grad_cam", "grad_cam", "postprocess_cam"]
