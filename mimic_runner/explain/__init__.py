"""Explanations as pure functions of a forward pass (Grad-CAM)."""

from mimic_runner.explain.gradcam import grad_cam, postprocess_cam

__all__ = ["grad_cam", "postprocess_cam"]
