"""What a model *is*, declared once in its config (``model.traits`` of ``conf/model/<name>.yaml``)
and read by validation, the builders, the report, the figures and the bench.

Traits live in the YAML rather than on the module class because one class serves several
models (``EnsembleModule`` is both the normal and the explanation ensemble, with different names
and report positions), and because the report reads finished run folders, whose saved config
carries the traits, without importing any model code. A class only checks that the traits fit
it (an ``EnsembleModule`` must be ``kind: ensemble``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mimic_runner.errors import UserError

KINDS = ("single", "ensemble")
# What a model's training loss may explain (besides classifying): nothing, its own Grad-CAMs or
# GradientSHAP maps (consistency), a human attention map, or an attention branch.
TRAINED_EXPLANATIONS = (None, "gradcam", "gradient_shap", "gaze", "attention")


@dataclass(frozen=True)
class ModelTraits:
    """A model option's identity.

    ``kind``: ``single`` or ``ensemble`` (ensembles need ``model.ensemble_size >= 2`` and report
    per-member values). ``display_name``: the label of tables and figures (None: the model's
    name). ``report_order``: position in tables and figures, lower first (None: after the
    ordered ones, by name). ``trains_explanation``: what its loss trains the explanation towards
    (see :data:`TRAINED_EXPLANATIONS`). ``takes_gaze``: training needs the data's ``gaze`` map.
    ``channels_last_default``: NHWC weights by default on a CPU with a ``cpu_channels_last``
    backbone (only where measured faster, BENCHMARKS.md). ``sample_figure``: shown in the
    report's Figure 2 (explanations of sample images).
    """

    kind: str = "single"
    display_name: str | None = None
    report_order: float | None = None
    trains_explanation: str | None = None
    takes_gaze: bool = False
    channels_last_default: bool = False
    sample_figure: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"model.traits.kind={self.kind}: use {' or '.join(KINDS)}")
        if self.trains_explanation not in TRAINED_EXPLANATIONS:
            raise UserError(f"model.traits.trains_explanation={self.trains_explanation}: use "
                            f"null or one of {', '.join(map(str, TRAINED_EXPLANATIONS[1:]))}")
        for key in ("takes_gaze", "channels_last_default", "sample_figure"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"model.traits.{key}={getattr(self, key)}: use true or false")
        order = self.report_order
        if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
            raise UserError(f"model.traits.report_order={order}: use a number (or null)")

    @property
    def is_ensemble(self) -> bool:
        return self.kind == "ensemble"

    def label(self, name: str) -> str:
        """The display name, else the model's name."""
        return self.display_name or name

    @classmethod
    def of(cls, node: Mapping[str, Any] | ModelTraits | None,
           default: ModelTraits | None = None) -> ModelTraits:
        """Traits from a config node (``model.traits``; a mapping, DictConfig included) over
        ``default``; unknown keys are one :class:`UserError` line."""
        base = default or cls()
        if node is None:
            return base
        if isinstance(node, ModelTraits):
            return node
        known = {f.name for f in fields(cls)}
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        for key in node:
            if key not in known:
                raise UserError(f"model.traits.{key}: no such trait; use "
                                f"{', '.join(sorted(known))}")
            values[str(key)] = node[key]
        return cls(**values)
