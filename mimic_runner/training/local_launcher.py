"""What a job of the ``local`` (joblib) launcher gets: its number of parallel jobs, its GPU slot
and its share of the CPU cores as torch threads."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mimic_runner.config.resources import available_cpus, local_n_jobs

log = logging.getLogger(__name__)
__all__ = ["available_cpus", "cpu_threads_per_job", "gpu_slot_order", "local_job_resources",
           "local_n_jobs"]


def gpu_slot_order(job_num: int, n_gpus: int, jobs_per_gpu: int) -> list[tuple[int, int]]:
    """The (gpu, slot) pairs job ``job_num`` tries, in order, under the ``local`` launcher.

    Its first choice is GPU ``job_num % n_gpus`` — consecutive jobs, which run side by side,
    land on different GPUs, and ``jobs_per_gpu`` slots per GPU pack that many jobs on one — then
    every other slot, so a job that finds its GPU full takes a free one elsewhere.
    """
    if n_gpus < 1 or jobs_per_gpu < 1:
        return []
    slots = [(g, k) for k in range(jobs_per_gpu) for g in range(n_gpus)]
    first = (job_num % n_gpus) + n_gpus * ((job_num // n_gpus) % jobs_per_gpu)
    return slots[first:] + slots[:first]


def cpu_threads_per_job(n_cpus: int, n_jobs: int) -> int:
    """Torch threads for each of ``n_jobs`` parallel jobs, so they do not oversubscribe."""
    return max(1, n_cpus // max(1, n_jobs))


@contextlib.contextmanager
def local_job_resources(job_num: int, n_jobs: int, use_gpus: bool, jobs_per_gpu: int
                        ) -> Iterator[int | None]:
    """Give a ``local``-launcher job its CPU threads and a GPU slot; yields the GPU index (or
    None without a GPU) for the caller to pass on as ``trainer.devices=[gpu]``.

    The slot is a file lock held while the job runs, so no GPU holds more than
    ``jobs_per_gpu`` jobs even when the jobs finish out of order. The GPU is chosen through the
    Trainer's devices (and ``torch.cuda.set_device``) rather than ``CUDA_VISIBLE_DEVICES``:
    joblib reuses its worker processes, and CUDA reads that variable only once per process.
    """
    import torch
    from filelock import FileLock, Timeout

    torch.set_num_threads(cpu_threads_per_job(available_cpus(), n_jobs))
    n_gpus = torch.cuda.device_count() if use_gpus else 0
    order = gpu_slot_order(job_num, n_gpus, jobs_per_gpu)
    if not order:
        yield None
        return
    lock_dir = Path(tempfile.gettempdir()) / f"mimic-runner-gpu-slots-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = None
    for gpu, k in order:
        candidate = FileLock(str(lock_dir / f"gpu{gpu}-slot{k}.lock"))
        try:
            candidate.acquire(timeout=0)
        except Timeout:
            continue
        lock = candidate
        break
    if lock is None:  # more parallel jobs than slots: wait for the first choice
        gpu, k = order[0]
        lock = FileLock(str(lock_dir / f"gpu{gpu}-slot{k}.lock"))
        lock.acquire()
    try:
        torch.cuda.set_device(gpu)
        log.info("job %d: GPU %d (slot %d)", job_num, gpu, k)
        yield gpu
    finally:
        lock.release()
