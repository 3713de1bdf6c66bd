"""Data-loading throughput of the ``HDF5DataModule`` train loader (as ``mimic-run`` builds it).

Counted: iterating the train loader (sampling, collation of the in-memory tensors) and the
DataModule's ``on_after_batch_transfer`` (normalisation, augmentation if configured) on the
host — everything a training step waits for before its forward pass. The file read and the
split setup happen once per run and are excluded (reported separately).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mimic_runner.bench.steps import compose_config


def build_datamodule(overrides: Sequence[str] = ()) -> Any:
    """The DataModule of ``mimic-run <overrides>``, set up (data generated on first use)."""
    from mimic_runner.training.builders import build_datamodule as _build

    cfg = compose_config(overrides)
    dm = _build(cfg)
    t0 = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    dm.setup_seconds = time.perf_counter() - t0
    return dm


def epoch_seconds(dm: Any, epoch: int = 0, max_batches: int | None = None) -> tuple[float, int]:
    """Time one pass over the train loader; returns (seconds, images)."""
    loader = dm.train_dataloader()
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    n = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        batch = dm.on_after_batch_transfer(batch, 0)
        n += len(batch["label"])
        if max_batches is not None and i + 1 >= max_batches:
            break
    return time.perf_counter() - t0, n
