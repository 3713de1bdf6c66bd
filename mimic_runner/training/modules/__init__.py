"""The LightningModules of the models, one concept a file.

``base`` holds :class:`ExplainedClassifier` (training, metrics, explanation at test time) and
the paper's baseline; ``unet``, ``ensemble`` and ``attention`` the models that change the net,
the loss or the explanation. Config ``_target_`` paths name the classes through this package
(``mimic_runner.training.modules.EnsembleModule``).
"""

from mimic_runner.training.modules.attention import AttentionBranchModule, attention_maps
from mimic_runner.training.modules.base import BaselineModule, ExplainedClassifier
from mimic_runner.training.modules.ensemble import TRAIN_EXPLANATIONS, EnsembleModule
from mimic_runner.training.modules.unet import UNetModule

__all__ = ["TRAIN_EXPLANATIONS", "AttentionBranchModule", "BaselineModule", "EnsembleModule",
           "ExplainedClassifier", "UNetModule", "attention_maps"]
