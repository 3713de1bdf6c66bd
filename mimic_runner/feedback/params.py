"""The settings of a retraining, declared once: the API schema (``RetrainIn`` in
:mod:`~mimic_runner.feedback.schemas`), the command-line flags of ``mimic-feedback retrain`` and
the session's checks are all built from the fields of :class:`RetrainParams` and their bounds.
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mimic_runner.feedback.errors import FeedbackInvalid
from mimic_runner.feedback.roi import TARGET_MODES

TRAIN_PARTS = ("attention", "perception", "all")
HELDOUT_SPLITS = ("val", "test")


def _setting(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
             le: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its bounds (``ge``/``gt``/``le``) or ``choices`` and its help."""
    return field(default=default, metadata={"help": help, "ge": ge, "gt": gt, "le": le,
                                            "choices": choices})


@dataclass
class RetrainParams:
    """What to retrain and how. Every field is an API body key and a CLI flag
    (``feedback_batch_size`` -> ``--feedback-batch-size``), with the bounds given here."""

    gamma: float = _setting(30.0, "weight γ of the feedback loss (L = L_task + γ·L_feedback)",
                            ge=0, le=1e6)
    epochs: int = _setting(1, "training passes over the training images", ge=1, le=1000)
    lr: float = _setting(1e-3, "learning rate of the optimiser (Adam)", gt=0, le=1)
    train: str = _setting("all", "which parts are trained", choices=TRAIN_PARTS)
    mode: str = _setting("edit", "how the corrected map is built from the regions",
                         choices=TARGET_MODES)
    max_batches: int | None = _setting(None, "training batches per pass (none: the whole "
                                       "training split)", ge=1, le=100_000)
    batch_size: int | None = _setting(None, "training batch size (none: the run's "
                                      "data.batch_size)", ge=1, le=4096)
    feedback_batch_size: int = _setting(16, "images with feedback added to every training "
                                        "batch", ge=1, le=1024)
    heldout: str = _setting("val", "held-out images the candidate is measured on",
                            choices=HELDOUT_SPLITS)
    seed: int = _setting(0, "random seed of the retraining", ge=0, le=2**31 - 1)

    def validate(self) -> RetrainParams:
        """Check every field against its declared bounds; one :class:`FeedbackInvalid` line."""
        for spec in specs():
            value = getattr(self, spec.name)
            problem = spec.problem(value)
            if problem:
                raise FeedbackInvalid(f"retrain: {spec.name}={value!r}: {problem}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RetrainParams:
        """The parameters named in ``values`` (other keys ignored), defaults for the rest."""
        names = {s.name for s in specs()}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class Spec:
    """One setting: name, type (``int``/``float``/``str``), whether None is allowed, default,
    help, bounds and choices."""

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    ge: float | None
    gt: float | None
    le: float | None
    choices: tuple[str, ...] | None

    def bounds_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
        return f"{'a whole number' if self.kind is int else 'a number'} in {lo}, {self.le:g}]"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (None when it is)."""
        if value is None:
            return None if self.optional else f"use {self.bounds_text()}"
        if self.choices is not None:
            return None if value in self.choices else f"use {self.bounds_text()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"use {self.bounds_text()}"
        if self.kind is int and not isinstance(value, int):
            return f"use {self.bounds_text()}"
        ok = (math.isfinite(value) and (self.ge is None or value >= self.ge)
              and (self.gt is None or value > self.gt) and (self.le is None or value <= self.le))
        return None if ok else f"use {self.bounds_text()}"


def specs() -> list[Spec]:
    """The settings of :class:`RetrainParams`, in declaration order."""
    hints = typing.get_type_hints(RetrainParams)
    out = []
    for f in fields(RetrainParams):
        args = typing.get_args(hints[f.name])
        kind = next((a for a in args if a is not type(None)), hints[f.name])
        m = f.metadata
        out.append(Spec(f.name, kind, type(None) in args, f.default, m["help"], m["ge"],
                        m["gt"], m["le"], m["choices"]))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting, with its type, choices, default and bounds in the help."""
    for s in specs():
        flag = "--" + s.name.replace("_", "-")
        shown = "none" if s.default is None else s.default
        extra = "" if s.choices else f"; {s.bounds_text()}"
        parser.add_argument(flag, dest=s.name, type=s.kind, choices=s.choices,
                            default=s.default, help=f"{s.help} (default: {shown}{extra})")


def from_namespace(args: argparse.Namespace) -> RetrainParams:
    """The parameters of parsed command-line flags (see :func:`add_arguments`)."""
    return RetrainParams(**{s.name: getattr(args, s.name) for s in specs()})
