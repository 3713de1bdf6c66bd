"""The windowed best checkpoint writes ``last.ckpt`` every epoch — before its window opens and in
epochs that did not improve, where Lightning 2.6 on its own writes none — so a run stopped (a
kill, a SLURM requeue or time-out) resumes from the epoch it had reached."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from mimic_runner.training.callbacks import WindowedModelCheckpoint


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        # Worse every epoch: only the window's first epoch is ever the best.
        self.log("val/loss", torch.tensor(float(self.current_epoch)))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Files(L.Callback):
    """The checkpoint files at the start of each epoch: what the epochs before it left (Lightning
    runs checkpoint callbacks after every other callback, so an epoch end is too early)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[list[str]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(sorted(p.name for p in self.folder.glob("*.ckpt")))


def test_last_checkpoint_every_epoch_before_the_window(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    ckpt = WindowedModelCheckpoint(dirpath=tmp_path, filename="epoch{epoch:03d}",
                                   auto_insert_metric_name=False, monitor="val/loss", mode="min",
                                   save_last=True, save_top_k=1, select_after=2)
    files = _Files(tmp_path)
    trainer = L.Trainer(max_epochs=4, callbacks=[ckpt, files], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(_Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    # Epochs 0 and 1 are outside the best-checkpoint window, but each left last.ckpt.
    assert files.seen[:3] == [[], ["last.ckpt"], ["last.ckpt"]], files.seen
    assert files.seen[3] == ["epoch002.ckpt", "last.ckpt"], files.seen
    # Epoch 3 did not improve on epoch 2: last.ckpt is epoch 3's all the same.
    assert Path(ckpt.best_model_path).name == "epoch002.ckpt"
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 3
