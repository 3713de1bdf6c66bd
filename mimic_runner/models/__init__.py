"""Backbones and the networks of the paper's models; every network returns a ModelOutput."""

from mimic_runner.models.output import ModelOutput

__all__ = ["ModelOutput"]
