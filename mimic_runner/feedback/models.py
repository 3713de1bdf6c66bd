"""The model versions a session serves: built from the run's config, weights loaded from each
version's sha256-checked checkpoint, a few kept in memory, and the hash of the served weights."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from mimic_runner.feedback.store import FeedbackStore
from mimic_runner.training.modules import AttentionBranchModule

MODEL_CACHE = 3  # versions kept in memory (current, candidate, one more for diffs)


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class VersionModels:
    """Modules of the versions of ``store`` (``build()`` makes an untrained one)."""

    def __init__(self, store: FeedbackStore, build: Callable[[], AttentionBranchModule],
                 lock: threading.RLock) -> None:
        self.store, self.build, self.lock = store, build, lock
        self._models: OrderedDict[int, AttentionBranchModule] = OrderedDict()
        self._weights_sha: dict[int, tuple[int, str]] = {}

    def put(self, module: AttentionBranchModule, version: dict[str, Any]) -> None:
        """Serve ``module`` (already holding the version's weights) for ``version``."""
        module.eval()
        module.feedback_version = version["id"]  # type: ignore[attr-defined]
        with self.lock:
            self._models[int(version["id"])] = module
            while len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)

    def get(self, version_id: int | None = None) -> AttentionBranchModule:
        """The module of a version (default: the current one), weights from its checkpoint."""
        version = self.store.current() if version_id is None else self.store.version(version_id)
        vid = int(version["id"])
        with self.lock:
            if vid in self._models:
                self._models.move_to_end(vid)
                return self._models[vid]
        path = self.store.verified_checkpoint(version)
        module = self.build()
        state = torch.load(path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        self.put(module, version)
        return module

    def forget(self, version_id: int) -> None:
        """Drop a version from memory: the next use reloads it from its checked file."""
        with self.lock:
            self._models.pop(version_id, None)

    def weights_sha256(self, version_id: int) -> str:
        """sha256 of the served weights of a version (recomputed whenever it is reloaded)."""
        module = self.get(version_id)
        with self.lock:
            cached = self._weights_sha.get(version_id)
            if cached is None or cached[0] != id(module):
                cached = (id(module), state_sha256(module))
                self._weights_sha[version_id] = cached
            return cached[1]
