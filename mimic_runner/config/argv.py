"""The ``mimic-run`` command line: Hydra's flags and overrides, the options of config groups, the
launcher plugins, and the pre-flight that composes and validates the first job's config before
Hydra starts, so that a mistake is one :class:`~mimic_runner.errors.UserError` line."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mimic_runner.config.compose import compose
from mimic_runner.config.limits import REQUIRED_SECTIONS, check_machine
from mimic_runner.config.validate import (
    check_local_launcher,
    check_optimized_metric,
    check_trackers,
    validate,
)
from mimic_runner.errors import UserError
from mimic_runner.paths import conf_dir, sweeps_dir

# launcher option -> (Hydra plugin module, pip package)
LAUNCHER_PLUGINS = {
    "local": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
# hydra/sweeper option -> (pip package, the extra that installs it)
SWEEPER_PLUGINS = {"optuna": ("hydra-optuna-sweeper", "tuning")}
# Flags of Hydra's command line that take a value (everything else without "=" is a flag).
_VALUE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn",
                "--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def first_line(exc: BaseException) -> str:
    """An exception's message as one line: its first line, whitespace collapsed, no final
    full stop (the caller appends what to do); the type's name when the message is empty."""
    text = " ".join(str(exc).strip().split("\n")[0].split()) or type(exc).__name__
    return text.rstrip(".")


def check_launcher_plugin(argv: Sequence[str],
                          find_spec: Callable[[str], Any] = importlib.util.find_spec) -> None:
    """Raise a :class:`UserError` naming the package when ``launcher=X`` needs a missing plugin
    (Hydra alone would only say that the config ``hydra/launcher/...`` was not found)."""
    for arg in argv:
        if not arg.startswith("launcher="):
            continue
        name = arg.split("=", 1)[1]
        if name not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[name]
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise UserError(f"launcher={name} needs the Hydra plugin '{package}'; install the "
                            "launchers extra: pip install 'mimic-runner[launchers]'")


def config_dirs(argv: Sequence[str]) -> list[Path]:
    """The packaged ``conf/`` plus any ``--config-dir``/``-cd`` the user added."""
    dirs = [Path(conf_dir())]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def group_options(group: str, dirs: Sequence[Path] = ()) -> set[str]:
    """The options of a config group (``model`` -> baseline, expl_ensemble, ...)."""
    if group == "sweep":
        return {p.stem for p in Path(sweeps_dir()).glob("*.yaml")}
    found = [d / group for d in (Path(conf_dir()), *dirs) if (d / group).is_dir()]
    return {p.stem for d in found for p in d.glob("*.yaml")}


def check_group_options(argv: Sequence[str]) -> None:
    """Raise a :class:`UserError` for ``group=option`` naming no option of a config group.

    Hydra would print a multi-line "Could not find" block; a typo in ``model=`` deserves one
    line that lists the choices. Sweep expressions (``choice(...)``, interpolations) and
    ``null`` are left to Hydra."""
    dirs = config_dirs(argv)
    for arg in argv:
        if arg.startswith("~") and "=" not in arg:
            check_not_removed(arg, arg[1:], "", dirs)
        if arg.startswith("-") or "=" not in arg:
            continue
        group, value = arg.lstrip("+~").split("=", 1)
        check_not_removed(arg, group, value, dirs)
        if "/" in group or "." in group or any(c in value for c in "()[]{}$"):
            continue
        options = group_options(group, dirs)
        if not options:
            continue
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                raise UserError(f"{group}={choice}: no such option in config group '{group}'; "
                                f"choose one of {', '.join(sorted(options))}")


def check_not_removed(arg: str, group: str, value: str, dirs: Sequence[Path]) -> None:
    """``~model``, ``model=null``: a run cannot do without the groups of
    :data:`~mimic_runner.config.limits.REQUIRED_SECTIONS` (Hydra would fail later, with a
    traceback)."""
    if group not in REQUIRED_SECTIONS:
        return
    if arg.startswith("~") or "null" in value.split(","):
        options = ", ".join(sorted(group_options(group, dirs)))
        raise UserError(f"{arg}: every run needs a {group}; choose one of {options} instead "
                        "of removing it")


def check_config_dirs(argv: Sequence[str]) -> None:
    """Every ``--config-dir`` names a folder (Hydra warns, then fails, in two messages)."""
    for d in config_dirs(argv)[1:]:
        if not d.is_dir():
            raise UserError(f"--config-dir {d}: no such folder; give the folder that holds "
                            "your extra config groups (e.g. my_conf/ with model/mine.yaml)")


def check_argv(argv: Sequence[str]) -> DictConfig:
    """Every check of a ``mimic-run`` command line before Hydra starts: launcher plugins,
    config-group options, then the composed config itself (:func:`preflight`), which is
    returned (with its ``hydra`` node: the run folder and the mode)."""
    check_config_dirs(argv)
    check_launcher_plugin(argv)
    check_group_options(argv)
    return preflight(argv)


def flags_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with Hydra's flags (and their values) before the overrides: Hydra's parser
    takes the overrides as one positional list, so ``a=1 -m b=1,2`` would be refused with a
    usage block ("unrecognized arguments: b=1,2")."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            overrides.append(arg)
        elif arg in ("--info", "-i"):
            flags.append(arg)
            if i + 1 < len(argv) and argv[i + 1] in _INFO_CHOICES:
                i += 1
                flags.append(argv[i])
        elif arg in _VALUE_FLAGS and i + 1 < len(argv):
            flags += [arg, argv[i + 1]]
            i += 1
        else:
            flags.append(arg)
        i += 1
    return flags + overrides


def command_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line (``key=value`` items), without flags and their values."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _VALUE_FLAGS:
            skip = arg not in ("--info", "-i")  # --info's value is optional
            continue
        if arg.startswith("-") or "=" not in arg:
            continue
        overrides.append(arg)
    return overrides


def first_job_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep's first job (each sweep's first value; sweeper-only
    expressions left out); a syntax error is one :class:`UserError` line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for item in overrides:  # Python refuses to read more than 4,300 digits, with a traceback
        digits = max((len(m) for m in re.findall(r"\d+", item)), default=0)
        if digits > 1000:
            raise UserError(f"{item.split('=', 1)[0]}: a number with {digits:,} digits is far "
                            "beyond any setting's range; use a smaller number")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, ValueError) as exc:
        raise UserError(f"{first_line(exc)}; check the override's syntax") from None
    first = []
    for o in parsed:
        if o.is_sweep_override():
            value = _first_value(o)
            if value is None:
                continue  # a sweeper-only expression: left to the sweeper
            first.append(f"{o.get_key_element()}={value}")
        else:
            first.append(o.input_line)
    return first


def preflight(argv: Sequence[str]) -> DictConfig:
    """Compose the command line's config (the first job of a sweep) and validate it, so that
    an unknown key or a bad value is one :class:`UserError` line before Hydra starts (Hydra
    prints a multi-line block and exits 1). Returns it, with its ``hydra`` node."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    first = first_job_overrides(command_overrides(argv))
    try:
        cfg = compose(first, return_hydra_config=True, config_dirs=config_dirs(argv)[1:])
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise UserError(_composition_error(exc)) from None
    validate(cfg)
    check_machine(cfg)
    check_trackers(cfg)
    check_local_launcher(cfg)
    if "-m" in argv or "--multirun" in argv:
        check_optimized_metric(cfg)
    return cfg


def _first_value(o: Any) -> str | None:
    """The value of a sweep override that the first job gets: the first of a list or range, the
    lower end of an Optuna interval (``interval(1, 100)``, ``tag(log, interval(...))``, a whole
    number as an integer); None for what only a sweeper understands."""
    from hydra.core.override_parser.types import IntervalSweep
    from hydra.errors import HydraException

    value = o.value()
    if isinstance(value, IntervalSweep):
        start = value.start
        if isinstance(start, float) and start.is_integer():
            start = int(start)
        return None if start is None else str(start)
    try:
        return str(next(iter(o.sweep_string_iterator())))
    except (StopIteration, HydraException, TypeError, ValueError):
        return None


def _composition_error(exc: BaseException) -> str:
    msg = first_line(exc)
    m = re.search(r"Could not find 'hydra/sweeper/([^']+)'", msg)
    if m and m.group(1) in SWEEPER_PLUGINS:
        package, extra = SWEEPER_PLUGINS[m.group(1)]
        where = re.search(r"In '(?:sweep/)?([^']+)'", msg)
        what = f"sweep={where.group(1)}" if where and "/" not in where.group(1) else \
            f"hydra/sweeper={m.group(1)}"
        return (f"{what} needs the Hydra plugin '{package}'; install the {extra} extra: "
                f"pip install 'mimic-runner[{extra}]'")
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        return (f"{m.group(1)}: no such config key; check its spelling (`mimic-run --cfg job` "
                f"shows every key) or add a new one with +{m.group(1)}=...")
    m = re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        return f"{m.group(1)}: no such config key; `mimic-run --cfg job` shows every key"
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        msg = f"{msg}: {first_line(cause)}"
    return f"{msg}; `mimic-run --cfg job` shows the composed config"
