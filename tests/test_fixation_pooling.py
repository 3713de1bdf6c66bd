"""Fixations shrink by max-pooling: a cell is fixated when any pixel in it is."""

from __future__ import annotations

import torch

from mimic_runner.data.datamodule import _resize_maps


def test_max_pooled_fixations_keep_every_fixated_cell() -> None:
    g = torch.Generator().manual_seed(0)
    fix = torch.rand(4, 1, 128, 128, generator=g) > 0.999  # ~16 isolated fixated pixels each
    small = _resize_maps(fix, 64, "max")
    assert small.dtype == torch.bool and small.shape == (4, 1, 64, 64)
    # Every 2x2 cell with a fixated pixel is fixated, and no other cell.
    cells = fix.reshape(4, 1, 64, 2, 64, 2).any(dim=5).any(dim=3)
    assert torch.equal(small, cells)
    # Nearest keeps only the pixels that happen to sit on the sampling grid.
    nearest = _resize_maps(fix, 64, "nearest")
    assert int(nearest.sum()) < int(small.sum())


def test_max_pooling_with_an_uneven_ratio_loses_no_image() -> None:
    fix = torch.zeros(3, 1, 100, 100, dtype=torch.bool)
    fix[0, 0, 0, 99] = fix[1, 0, 57, 3] = fix[2, 0, 99, 0] = True
    small = _resize_maps(fix, 64, "max")
    assert small.flatten(1).any(dim=1).all()
    # Upsampling stays nearest (no cell grows).
    assert int(_resize_maps(fix, 200, "max").sum()) == 3 * 4
