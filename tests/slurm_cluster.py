"""A real one-node SLURM cluster for the ``launcher=slurm`` tests (``scripts/slurm_local.sh``).

Imported as a plain module, like ``cli_helpers``. The cluster needs root and Debian's
``slurm-wlm munge slurmdbd mariadb-server`` (``make slurm-deps``); :func:`unavailable` says why
it cannot start here. ``MIMIC_TEST_SLURM``: unset/``auto`` starts it when it can and skips the
tests otherwise, ``require`` turns every reason to skip into a failure (CI, after installing
the packages), ``off`` skips without trying.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"
# What the script runs; /usr/sbin is searched too (not on every root PATH).
BINARIES = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "mariadb-admin", "slurmdbd",
            "slurmctld", "slurmd", "sbatch", "sacct", "scontrol", "setpriv")


@dataclass
class SlurmCluster:
    folder: Path
    start_seconds: float

    @property
    def conf(self) -> Path:
        return self.folder / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, sacct, ``mimic-run launcher=slurm``) needs to find it."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A SLURM command (``scontrol``, ``sacct``, ...) against this cluster."""
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=60, check=check)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.folder / "log").glob("*.log")):
            out.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace")
                                                      .splitlines()[-lines:]))
        return "\n".join(out)


def mode() -> str:
    return os.environ.get("MIMIC_TEST_SLURM", "auto").strip().lower() or "auto"


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def unavailable() -> str | None:
    """Why no cluster can start on this machine, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (SLURM and munge daemons, the munge user)"
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return "hydra-submitit-launcher is not installed (pip install 'mimic-runner[launchers]')"
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return (f"missing {', '.join(missing)}: install Debian's slurm-wlm munge slurmdbd "
                "mariadb-server (`make slurm-deps`, as root)")
    return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(count: int = 4) -> int:
    """The first of ``count`` consecutive free TCP ports (slurmctld, slurmd, slurmdbd,
    MariaDB), so the test cluster never meets a user's rehearsal cluster or a real one."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range for the test cluster")


def _script(command: str, folder: Path, port: int | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder)}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    if port is not None:
        env["SLURM_LOCAL_PORT"] = str(port)
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True,
                          text=True, timeout=timeout)


class CannotStart(RuntimeError):
    """The cluster did not come up; the message holds the script's output."""


def start() -> SlurmCluster:
    """Start a fresh cluster in a new folder under /tmp (the munge user must reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="mimic-slurm-test-"))
    folder.chmod(0o755)
    t0 = time.monotonic()
    r = _script("start", folder, port=free_port_base())
    if r.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)  # the script stopped what it had started
        raise CannotStart(f"scripts/slurm_local.sh start exited {r.returncode}:\n"
                          f"{r.stderr[-4000:]}")
    return SlurmCluster(folder=folder, start_seconds=time.monotonic() - t0)


def stop(cluster: SlurmCluster, keep: bool = False) -> str:
    """Cancel the jobs and stop every daemon the script started (by the pids it recorded);
    the folder goes too unless ``keep``. Returns the script's report."""
    r = _script("stop", cluster.folder, timeout=120)
    if not keep:
        shutil.rmtree(cluster.folder, ignore_errors=True)
    return r.stderr
