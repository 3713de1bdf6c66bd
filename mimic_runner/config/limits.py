"""Limits of a composed config that hold for every key: every section a run needs is there,
every interpolation resolves, every number is finite and within its bound, every path fits the
file system, the data fits in memory, and the Trainer's arguments fit Lightning and this
machine. Each is one :class:`~mimic_runner.errors.UserError` line before anything starts.

:func:`check_limits` is part of :func:`mimic_runner.config.validate` (the pre-flight and every
job); :func:`check_machine` is the pre-flight's only, since it looks at the machine that runs
the command (a SLURM sweep's jobs run elsewhere: skipped there).
"""

from __future__ import annotations

import difflib
import errno
import fnmatch
import inspect
import math
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mimic_runner.errors import UserError

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range
# Sections every run builds something from: removing one (`~model`, `model=null`) is refused.
REQUIRED_SECTIONS = ("data", "backbone", "model", "trainer", "paths", "explain")
# The largest value of each size, count and seed (fnmatch patterns of dotted keys; list items
# as key[i]); the first pattern that matches wins. Far above any sensible setting, low enough
# that nothing overflows or asks for an absurd amount of memory before a check sees it.
INT_BOUNDS: tuple[tuple[str, int], ...] = (
    ("seed", SEED_MAX), ("*.seed", SEED_MAX),
    ("data.batch_size", 65_536), ("data.eval_batch_size", 65_536),
    ("data.image_size", 8_192), ("data.synth.params.size", 8_192),
    ("data.synth.params.n", 10_000_000),
    ("trainer.max_epochs", 100_000), ("model.ensemble_size", 256),
    ("model.*channels*", 8_192),
    ("launcher.n_jobs", 1_024), ("launcher.jobs_per_gpu", 64),
    ("launcher.cpu_threads_per_job", 1_024),
)
# Any other whole number: exactly representable as a float (and so in JSON and torch).
INT_MAX = 2**53
# Bytes a synthetic image's pixel takes while generated and held (image, gaze, fixations,
# confounder and truth masks, plus the float copy a resize makes).
SYNTH_BYTES_PER_PIXEL = 16


def _line(exc: BaseException) -> str:
    """An exception's message as one line, without OmegaConf's "... raised while resolving"."""
    text = " ".join(str(exc).strip().split("\n")[0].split()) or type(exc).__name__
    if "raised while resolving interpolation: " in text:
        text = text.split("raised while resolving interpolation: ")[-1].strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
    return text.rstrip(".")


def _short(value: Any) -> str:
    """A value for an error line: a 5,000-digit number is shown by its length."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} characters)"


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, raw value) of every leaf under ``node``, interpolations unresolved; list
    items as ``key[i]``; the ``hydra`` node (Hydra's own settings) left out."""
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node.keys())
        names = [f"{prefix}.{k}" if prefix else str(k) for k in keys]
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
        names = [f"{prefix}[{i}]" for i in keys]
    else:
        return
    for key, name in zip(keys, names):
        if name == "hydra":
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            yield from leaves(child, name)
        else:
            yield name, None if child is None else child._value()


def check_limits(cfg: DictConfig) -> None:
    """Every limit of this module that needs only the config, in one pass each."""
    check_sections(cfg)
    check_interpolations(cfg)
    check_targets(cfg)
    check_numbers(cfg)
    check_paths(cfg)
    check_memory(cfg)


def check_sections(cfg: DictConfig) -> None:
    """A section removed with ``~name`` or ``name=null`` (in a user's config too)."""
    for section in REQUIRED_SECTIONS:
        if not isinstance(cfg.get(section), DictConfig):
            raise UserError(f"{section}: every run needs this config section, but it was "
                            f"removed (~{section} or {section}=null); choose one with "
                            f"{section}=NAME (`mimic-run --info defaults` shows the choices)")


def check_interpolations(cfg: DictConfig) -> None:
    """Every ``${...}`` outside the ``hydra`` node resolves (Hydra's runtime values aside)."""
    for key, raw in leaves(cfg):
        if not isinstance(raw, str) or "${" not in raw or "${hydra:" in raw:
            continue
        try:
            OmegaConf.select(cfg, key)
        except OmegaConfBaseException as exc:
            if "HydraConfig was not set" in str(exc):
                continue  # leads to a value only Hydra's runtime knows
            raise UserError(f"{key}={_short(raw)}: {_line(exc)}; fix the interpolation (set "
                            "the variable, or name an existing key)") from None


def check_targets(cfg: DictConfig) -> None:
    """Every ``_target_`` (a class or function Hydra builds) imports; the loggers' are worded by
    :func:`~mimic_runner.config.validate.check_trackers` (the extra to install)."""
    from hydra._internal.utils import _locate

    for key, raw in leaves(cfg):
        if not key.endswith("._target_") or key.startswith("logger") or not isinstance(raw, str):
            continue
        try:
            _locate(raw)
        except Exception as exc:  # ImportError, AttributeError, ValueError: all "not there"
            cause = exc.__cause__ or exc.__context__ or exc
            raise UserError(f"{key}={raw}: cannot import it ({type(cause).__name__}: "
                            f"{_line(cause)}); check the module path") from None


def int_bound(key: str) -> int:
    """The largest value a whole number under ``key`` may take."""
    if key == "data.num_workers":
        return max(32, 4 * (os.cpu_count() or 1))
    return next((bound for pattern, bound in INT_BOUNDS if fnmatch.fnmatchcase(key, pattern)),
                INT_MAX)


def check_numbers(cfg: DictConfig) -> None:
    """NaN and infinities nowhere; every whole number within its bound (:data:`INT_BOUNDS`)."""
    for key, value in leaves(cfg):
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}={value}: not a number this setting can use; give a finite "
                            "value")
        if isinstance(value, int):
            bound = int_bound(key)
            if abs(value) > bound and bound == SEED_MAX:
                raise UserError(f"{key}={_short(value)}: use an integer from 0 to {SEED_MAX}")
            if abs(value) > bound:
                raise UserError(f"{key}={_short(value)}: too large; use at most {bound:,}")


def _name_max() -> int:
    try:
        return int(os.pathconf(".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_path(key: str, value: str) -> None:
    """A path the file system can hold: each component within NAME_MAX bytes (255 on most),
    the whole within 4,096 bytes; checked before anything is created under it."""
    name_max = _name_max()
    if len(os.fsencode(value)) > 4096:
        raise UserError(f"{key}={_short(value)}: path too long ({len(value)} characters); "
                        "use a path of at most 4,096 bytes")
    for part in value.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{key}=...{_short(part)}: a folder or file name in this path has "
                            f"{len(os.fsencode(part))} bytes, more than the file system's "
                            f"{name_max}; shorten it")


def check_paths(cfg: DictConfig) -> None:
    """``data.path``, the ``paths`` section and ``sweep_name``: names the file system can hold
    (ENAMETOOLONG otherwise, after the run folder was made)."""
    keys = ["data.path", "sweep_name"]
    paths = cfg.get("paths")
    if isinstance(paths, DictConfig):
        keys += [f"paths.{k}" for k in paths]
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except OmegaConfBaseException:
            continue  # an interpolation only Hydra's runtime resolves
        if isinstance(value, str):
            check_path(key, value)


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new allocation (Linux's MemAvailable; None where
    it cannot tell)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Refuse ``what`` when it needs more than the memory available now, before allocating."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise UserError(f"{what}: needs about {nbytes / 2**30:,.1f} GiB of memory, this machine "
                        f"has {free / 2**30:,.1f} GiB available; {fix}")


def check_memory(cfg: DictConfig) -> None:
    """A synthetic dataset (and its resized copy) must fit in memory: the generator and the
    data module hold every image at once."""
    params = OmegaConf.select(cfg, "data.synth.params", default=None)
    if OmegaConf.select(cfg, "data.path", default=None) or not isinstance(params, DictConfig):
        return
    n, size = params.get("n"), params.get("size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, size)):
        return  # the generator's own checks word a bad value
    side = max(size, OmegaConf.select(cfg, "data.image_size", default=None) or 0)
    check_synth_fits(n, side, "data.synth.params.n=", "data.image_size")


def check_synth_fits(n: int, side: int, n_name: str, side_name: str) -> None:
    """``n`` synthetic images of ``side``x``side`` px fit in memory (generated, then held at
    once); ``n_name`` (``--n `` or ``data.synth.params.n=``) and ``side_name`` word the fix."""
    if n > int_bound("data.synth.params.n"):
        raise UserError(f"{n_name}{_short(n)}: too large; use at most "
                        f"{int_bound('data.synth.params.n'):,} images")
    check_fits(n * side * side * SYNTH_BYTES_PER_PIXEL, f"{n_name}{n} at {side}x{side} px",
               f"use a smaller {n_name.rstrip('= ')} or {side_name}")


# -- the machine --------------------------------------------------------------------------------

def check_machine(cfg: DictConfig) -> None:
    """The Trainer's arguments against Lightning's signature and this machine's devices."""
    node = cfg.get("trainer")
    if not isinstance(node, DictConfig):
        return
    check_trainer_arguments(node)
    if OmegaConf.select(cfg, "launcher.name") == "slurm":
        return  # the jobs run on other machines
    check_devices(node)


def check_trainer_arguments(node: DictConfig) -> None:
    """``+trainer.bogus_kw=1``: one line naming the key (Lightning would raise a TypeError when
    the job builds the Trainer, after its run folder was made)."""
    target = node.get("_target_")
    if not target:
        return
    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(str(target)).__init__).parameters
    except Exception:  # a bad class path is worded where the class is built
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in node:
        if str(key).startswith("_") or key in params:
            continue
        close = difflib.get_close_matches(str(key), list(params), n=1)
        hint = f"did you mean trainer.{close[0]}? " if close else ""
        raise UserError(f"trainer.{key}: Lightning's Trainer takes no such argument; {hint}"
                        "`mimic-run --cfg job` shows the trainer's keys")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(node: DictConfig) -> None:
    """``trainer=gpu`` without a GPU, or more devices than the machine has: refused before
    Lightning starts (it would relaunch the command once per device)."""
    accelerator = str(node.get("accelerator", "auto")).lower()
    devices = node.get("devices", "auto")
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        return  # mps, tpu, a custom one: Lightning's own checks
    gpus = _gpu_count() if accelerator != "cpu" else 0
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise UserError(f"trainer.accelerator={accelerator}: this machine has no CUDA GPU that "
                        "torch can use; use trainer=cpu (or trainer.accelerator=auto)")
    what, have = ("GPUs", gpus) if gpus else ("CPU cores", os.cpu_count() or 1)
    if isinstance(devices, bool):
        raise UserError(f"trainer.devices={devices}: use a number of devices, a list of "
                        "device indices, -1 (all) or auto")
    if isinstance(devices, int):
        if devices == 0 or devices < -1:
            raise UserError(f"trainer.devices={devices}: use 1 or more, -1 (all) or auto")
        if devices > have:
            raise UserError(f"trainer.devices={_short(devices)}: this machine has {have} "
                            f"{what}; use at most {have} (or -1 for all)")
    elif isinstance(devices, ListConfig) and gpus:
        bad = [d for d in devices if not isinstance(d, int) or not 0 <= d < gpus]
        if bad:
            raise UserError(f"trainer.devices={list(devices)}: GPU {bad[0]} does not exist; "
                            f"this machine has GPUs 0 to {gpus - 1}")
    used = (len(devices) if isinstance(devices, ListConfig) else
            have if devices == -1 or (devices == "auto" and gpus) else
            devices if isinstance(devices, int) else 1)
    if used > 1:
        raise UserError(f"trainer.devices={devices}: a run trains on one device (Lightning's "
                        f"multi-device mode would start this command again for each of {used}); "
                        "use trainer.devices=1 and run several runs at once with -m ... "
                        "launcher=local")


def name_too_long(exc: BaseException) -> str | None:
    """One line for an over-long path that reached the file system (ENAMETOOLONG); None for
    any other error."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return (f"{_short(exc.filename or 'a path')}: file name too long for the file system; "
                "shorten the folder or file names in it")
    return None
