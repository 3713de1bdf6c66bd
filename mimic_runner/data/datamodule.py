"""LightningDataModule over an HDF5 dataset file (the schema in :mod:`.schema`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mimic_runner.data.schema import (
    MAP_KEYS,
    MIN_IMAGE_SIDE,
    SPLITS,
    DatasetInfo,
    read_dataset,
    validate_dataset,
)
from mimic_runner.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorDictDataset(Dataset):
    """In-memory split: item i is a dict of per-image tensors plus its ``index`` in the split."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.n = len(tensors["image"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {k: v[i] for k, v in self.tensors.items()}
        item["index"] = torch.tensor(i)
        return item


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same order as an uninterrupted one (a stateful generator would not survive the restart).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _resize_maps(x: Tensor, size: int, mode: str) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "max" and size < x.shape[-1]:
        # A cell is fixated when any pixel in it is: nearest would drop most fixations (at
        # 64 px from 128, 6.0 of 23.9 fixated pixels per image survived) and some images' all.
        return F.adaptive_max_pool2d(x.float(), (size, size)).to(x.dtype)
    if mode in ("nearest", "max"):
        return F.interpolate(x.float(), size=(size, size), mode="nearest").to(x.dtype)
    return F.interpolate(x.float(), size=(size, size), mode=mode, align_corners=False,
                         antialias=True)


def random_affine_batch(batch: dict[str, Tensor], generator: torch.Generator,
                        max_shift: float = 0.05, max_rot_deg: float = 5.0,
                        max_scale: float = 0.05) -> dict[str, Tensor]:
    """Apply one random small affine per image, identically to the image and its maps.

    Written on batches (affine_grid + grid_sample) rather than per-sample torchvision transforms
    because it runs on the device after transfer and draws from a generator seeded by the step,
    which keeps augmentation reproducible across checkpoint resumes.
    """
    img = batch["image"]
    b = img.shape[0]
    r = torch.rand(b, 4, generator=generator).to(img.device) * 2 - 1
    angle = r[:, 0] * math.radians(max_rot_deg)
    scale = 1 + r[:, 1] * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, r[:, 2] * max_shift * 2], 1),
                         torch.stack([sin, cos, r[:, 3] * max_shift * 2], 1)], 1)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = dict(batch)
    out["image"] = F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)
    for key in MAP_KEYS:
        if key in batch:
            m = batch[key].unsqueeze(1).float()
            mode = "bilinear" if key == "gaze" else "nearest"
            warped = F.grid_sample(m, grid, mode=mode, padding_mode="zeros", align_corners=False)
            out[key] = warped.squeeze(1).to(batch[key].dtype)
    return out


class HDF5DataModule(L.LightningDataModule):
    """Train/val/test from the file's ``split``; images as float tensors, maps alongside.

    Batches are dicts: ``image`` (B, C, H, W) normalised float, ``label`` (B,), ``index`` (B,)
    (row in the split, for ids), and ``gaze`` (B, H, W) float, ``fixations``/``confounder``/
    ``finding`` (B, H, W) bool when the file has them (:attr:`maps` lists those present).
    The file is small enough to hold in memory; reading it once avoids per-item HDF5 access in
    workers.
    """

    def __init__(
        self,
        name: str,
        path: str | None = None,
        synth: dict[str, Any] | None = None,
        image_size: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = False,
        normalize: str = "dataset",
        cache_dir: str = "~/.cache/mimic-runner",
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Built directly too (scripts, notebooks): a bad value would otherwise fail deep in torch.
        self.validate_config({"batch_size": batch_size, "eval_batch_size": eval_batch_size,
                              "image_size": image_size, "num_workers": num_workers,
                              "normalize": normalize})
        self.name = name
        self.path = path
        self.synth = dict(synth) if synth else None
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.normalize = normalize
        self.cache_dir = cache_dir
        self.seed = seed
        self.splits: dict[str, TensorDictDataset] = {}
        self.ids: dict[str, np.ndarray] = {}
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._info: DatasetInfo | None = None

    @classmethod
    def validate_config(cls, data_cfg: Mapping[str, Any]) -> None:
        """Refuse ``data.*`` values that would fail deep in torch, one :class:`UserError` line
        each: the run's pre-flight calls it with the composed ``data`` node, ``__init__`` with
        its arguments."""
        def whole(value: Any, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        for what in ("batch_size", "eval_batch_size"):
            value = data_cfg.get(what, 1)
            if not whole(value, 1):
                raise UserError(f"data.{what}={value}: use a positive number of images per batch")
        size = data_cfg.get("image_size")
        if size is not None and not whole(size, 1):
            raise UserError(f"data.image_size={size}: use a size in pixels (or null to keep the "
                            "file's)")
        if size is not None and size < MIN_IMAGE_SIDE:
            raise UserError(f"data.image_size={size}: use null (keep the file's size) or a side "
                            f"of at least {MIN_IMAGE_SIDE} px")
        workers = data_cfg.get("num_workers", 0)
        if not whole(workers, 0):
            raise UserError(f"data.num_workers={workers}: use 0 or more loader processes")
        normalize = data_cfg.get("normalize", "dataset")
        if normalize not in ("dataset", "imagenet", "none"):
            raise UserError(f"data.normalize='{normalize}': use dataset, imagenet or none")

    # -- file -------------------------------------------------------------------------------
    def resolve_path(self) -> Path:
        """The dataset file, generating a synthetic set into the cache on first use."""
        if self.path is not None:
            return Path(self.path).expanduser()
        if self.synth is None:
            raise UserError(f"data '{self.name}': no file given; pass data.path=FILE")
        from mimic_runner.data.cache import ensure_synth

        return ensure_synth(self.synth["kind"], dict(self.synth.get("params") or {}),
                            self.cache_dir)

    @property
    def info(self) -> DatasetInfo:
        if self._info is None:
            self._info = validate_dataset(self.resolve_path())
        return self._info

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def in_channels(self) -> int:
        return self.info.channels

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def maps(self) -> list[str]:
        return self.info.maps

    @property
    def size(self) -> tuple[int, int]:
        if self.image_size:
            return (self.image_size, self.image_size)
        return (self.info.height, self.info.width)

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.resolve_path()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays, info = read_dataset(self.resolve_path())
        self._info = info
        split = arrays["split"]
        images = torch.from_numpy(arrays["images"])
        resize = self.image_size and (info.height, info.width) != (self.image_size,) * 2
        if resize and info.height != info.width:
            raise UserError(f"data.image_size={self.image_size}: images are "
                            f"{info.height}x{info.width}; only square resizing is supported")
        for i, name in enumerate(SPLITS):
            idx = torch.from_numpy(np.flatnonzero(split == i))
            t: dict[str, Tensor] = {
                "image": images[idx],
                "label": torch.from_numpy(arrays["labels"][idx.numpy()]),
            }
            for key in info.maps:
                t[key] = torch.from_numpy(arrays[key][idx.numpy()])
            if self.image_size:
                t["image"] = _resize_maps(t["image"].float(), self.image_size, "bilinear").round(
                ).clamp(0, 255).to(torch.uint8)
                for key in info.maps:
                    mode = {"gaze": "bilinear", "fixations": "max"}.get(key, "nearest")
                    t[key] = _resize_maps(t[key].unsqueeze(1), self.image_size, mode).squeeze(1)
                    if key == "gaze":
                        t[key] = t[key].clamp_min(0)
            self.splits[name] = TensorDictDataset(t)
            self.ids[name] = arrays["ids"][idx.numpy()]
        self._set_normalisation(info)

    def _set_normalisation(self, info: DatasetInfo) -> None:
        c = info.channels
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN[:c]) if c == 3 else torch.tensor([0.449])
            std = torch.tensor(IMAGENET_STD[:c]) if c == 3 else torch.tensor([0.226])
        elif self.normalize == "dataset":
            x = self.splits["train"].tensors["image"].float() / 255
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        else:
            mean, std = torch.zeros(c), torch.ones(c)
        self.mean, self.std = mean.view(1, c, 1, 1), std.view(1, c, 1, 1)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.splits:
            self.setup()
        ds = self.splits[split]
        if len(ds) == 0:
            raise UserError(f"{self.resolve_path()}: the '{split}' split is empty")
        # Own generators keep loaders from drawing on the global RNG (reproducible resumes).
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSeededSampler(len(ds), self.seed) if train else None,
            shuffle=False,
            num_workers=self.num_workers,
            drop_last=train and len(ds) > self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """An ordered loader over any split (for explanation tools)."""
        dl = self._loader(split, train=False)
        if batch_size:
            dl = DataLoader(dl.dataset, batch_size=batch_size, shuffle=False,
                            num_workers=self.num_workers)
        return dl

    def normalise(self, images_uint8: Tensor) -> Tensor:
        """uint8 (B, C, H, W) on any device -> normalised float."""
        assert self.mean is not None and self.std is not None
        x = images_uint8.float() / 255
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict:
        batch = dict(batch)
        batch["image"] = self.normalise(batch["image"])
        trainer = getattr(self, "trainer", None)
        if self.augment and trainer is not None and trainer.training:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step)
            batch = random_affine_batch(batch, g)
        return batch
