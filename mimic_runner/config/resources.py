"""The ``local_n_jobs`` resolver's arithmetic: how many jobs the ``local`` launcher runs at once.

It lives with the config because Hydra resolves it while composing the launcher's node (and the
pre-flight checks its inputs); the jobs' GPU slots and threads are
:mod:`mimic_runner.training.local_launcher`'s.
"""

from __future__ import annotations

import os

from mimic_runner.errors import UserError


def available_cpus() -> int:
    """The cores this process may run on (its affinity: a SLURM allocation, ``taskset``), not
    every core of the machine as ``os.cpu_count()`` says."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def local_n_jobs(n_jobs: int | None, jobs_per_gpu: int, n_gpus: int | None = None,
                 threads_per_job: int | None = None, n_cpus: int | None = None) -> int:
    """Parallel jobs of the ``local`` launcher: ``n_jobs`` if given; else every GPU times
    ``jobs_per_gpu``; else (no GPU) the CPU cores packed ``threads_per_job`` to a job
    (null: one job).

    Why pack on a CPU: a small model's training step is a chain of short parallel regions, and
    the threads of one job wait for each other at every one of them; jobs of one thread each
    never wait, so k one-thread jobs finish a sweep sooner than k-thread jobs one at a time
    (BENCHMARKS.md: a step with 2 threads was no faster than with 1 on 2 shared cores)."""
    if n_jobs is not None:
        return _positive(n_jobs, "launcher.n_jobs", " (or null)")
    jobs_per_gpu = _positive(jobs_per_gpu, "launcher.jobs_per_gpu")
    if threads_per_job is not None:
        threads_per_job = _positive(threads_per_job, "launcher.cpu_threads_per_job", " (or null)")
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    if n_gpus:
        return n_gpus * jobs_per_gpu
    if threads_per_job is None:
        return 1
    return max(1, (n_cpus or available_cpus()) // threads_per_job)


def _positive(value: object, key: str, alternative: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value}: use a positive whole number{alternative}")
    return value
