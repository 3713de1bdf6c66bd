"""mimic-runner: explanation-guided training of medical image classifiers.

``mimic_runner.load_checkpoint(path)`` returns the trained LightningModule of a checkpoint file
alone; ``mimic_runner.load_run(run_dir)`` a finished run's config, data and model.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

__all__ = ["__version__", "load_checkpoint", "load_run"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mimic_runner` (every CLI's --help) must not pay for torch and Lightning.
    if name == "load_checkpoint":
        from mimic_runner.training.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "load_run":
        from mimic_runner.analysis.load import load_run

        return load_run
    raise AttributeError(f"module 'mimic_runner' has no attribute {name!r}")
