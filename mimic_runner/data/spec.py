"""The HDF5 dataset schema's definition: keys, dtypes, splits, limits, and what a check of a
file learns (:class:`DatasetInfo`). The table and the checks: :mod:`mimic_runner.data.schema`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("images", "labels", "split", "ids")
# Optional per-pixel maps, in the order they are listed and loaded, with their dtypes.
MAP_DTYPES: dict[str, type] = {"gaze": np.float32, "fixations": np.bool_,
                               "confounder": np.bool_, "finding": np.bool_}
MAP_KEYS = tuple(MAP_DTYPES)
# Smallest image side accepted. Every backbone downsamples by at least 8 (the small CNN by 8,
# ResNet/DenseNet/EfficientNet by 32), so anything smaller leaves no spatial map to explain.
MIN_IMAGE_SIDE = 8
_BLOCK_BYTES = 64 << 20  # validation reads at most about this much at a time
_ID_BYTES = 64  # rough in-memory cost of one id string, for the memory estimate
Progress = Callable[[str], None]  # told the step about to be read (the key or attribute)



@dataclass
class DatasetInfo:
    """What :func:`validate_dataset` learned about a file."""

    path: Path
    n: int
    channels: int
    height: int
    width: int
    class_names: list[str]
    maps: list[str]
    split_counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]  # split -> class -> count
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
