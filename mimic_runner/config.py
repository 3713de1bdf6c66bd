"""The one place that knows how configs are found, composed and checked.

- :func:`register` adds the resolvers the shipped configs use and the ``sweep`` group (the
  ``sweeps/`` folder); every entry point calls it before Hydra composes anything.
- :func:`compose` gives the config ``mimic-run <overrides>`` would see, for the library,
  ``mimic-bench``, the feedback fixtures and the tests.
- :func:`check_argv` and :func:`validate` turn a bad command line or value into one
  :class:`~mimic_runner.errors.UserError` before any work starts.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.paths import conf_dir, sweeps_dir

# Overrides that choose where or how a job runs, never what it computes: they stay out of the
# run folder's name, so changing them (cluster partition, parallel jobs, the tracking server)
# finds the same runs.
_NOT_IN_DIRNAME = ("launcher.", "hydra.", "logger.")

# launcher option -> (Hydra plugin module, pip package)
LAUNCHER_PLUGINS = {
    "local": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
# hydra/sweeper option -> (pip package, the extra that installs it)
SWEEPER_PLUGINS = {"optuna": ("hydra-optuna-sweeper", "tuning")}
# logger factory (conf/logger/*.yaml `_target_` ends with it) -> (option, package)
TRACKER_PACKAGES = {"mlflow_logger": ("mlflow", "mlflow"), "wandb_logger": ("wandb", "wandb")}
# The values every run records without explain.val_explanations (a sweeper may optimise them).
_PLAIN_VAL_METRICS = ("val/acc", "val/auroc", "val/loss")


def split_overrides(joined: str) -> list[str]:
    """Split Hydra's comma-joined ``override_dirname`` into items (commas inside [], {}, ()
    or quotes belong to a value)."""
    items, depth, quote, cur = [], 0, "", []
    for ch in joined:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [i for i in items if i]


def run_dirname(override_dirname: str) -> str:
    """A run folder name from the job's overrides: deterministic, one path component."""
    items = [i for i in split_overrides(override_dirname)
             if not i.lstrip("+~").startswith(_NOT_IN_DIRNAME)]
    if not items:
        return "defaults"
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(items).replace("/", "_"))[:200]


def _local_n_jobs(n_jobs: int | None, jobs_per_gpu: int, threads_per_job: int | None = None
                  ) -> int:
    from mimic_runner.training.local_launcher import local_n_jobs

    return local_n_jobs(n_jobs, jobs_per_gpu, threads_per_job=threads_per_job)


def register() -> None:
    """Resolvers and the ``sweep`` group (the top-level ``sweeps/`` folder); idempotent."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)
    if not OmegaConf.has_resolver("local_n_jobs"):
        OmegaConf.register_new_resolver("local_n_jobs", _local_n_jobs)
    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False,
            config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The config ``mimic-run <overrides>`` composes (the shipped ``conf/`` plus
    ``config_dirs``), outside any running Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    paths = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
    extra = [f"hydra.searchpath=[{paths}]"] if config_dirs else []
    was = GlobalHydra.instance().is_initialized()
    if was:  # e.g. called from inside a Hydra job: compose in a fresh context, then restore
        saved = GlobalHydra.instance().hydra
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=[*extra, *overrides],
                                 return_hydra_config=return_hydra_config)
    finally:
        if was:
            GlobalHydra.instance().initialize(saved)


def load_run_config(path: str | Path) -> DictConfig:
    """A run's saved ``.hydra/config.yaml`` (resolvers registered, so it resolves)."""
    register()
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path}: not a run config (expected a mapping)")
    return cfg


# -- the command line ---------------------------------------------------------------------------

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
        if arg.startswith("-") or "=" not in arg:
            continue
        group, value = arg.lstrip("+~").split("=", 1)
        if "/" in group or "." in group or any(c in value for c in "()[]{}$"):
            continue
        options = group_options(group, dirs)
        if not options:
            continue
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                raise UserError(f"{group}={choice}: no such option in config group '{group}'; "
                                f"choose one of {', '.join(sorted(options))}")


def check_argv(argv: Sequence[str]) -> DictConfig:
    """Every check of a ``mimic-run`` command line before Hydra starts: launcher plugins,
    config-group options, then the composed config itself (:func:`preflight`), which is
    returned (with its ``hydra`` node: the run folder and the mode)."""
    check_launcher_plugin(argv)
    check_group_options(argv)
    return preflight(argv)


# -- values -------------------------------------------------------------------------------------

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range


def _int(cfg: DictConfig, key: str, low: int, what: str, allow_none: bool = False
         ) -> int | None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key}={value}: {what}")
    if value < low:
        raise UserError(f"{key}={value}: {what}")
    return value


def validate(cfg: DictConfig) -> None:
    """Refuse values that would fail later (or silently do nothing), in one line each."""
    seed = OmegaConf.select(cfg, "seed", default=None)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed={seed}: use an integer from 0 to {SEED_MAX}")
    _int(cfg, "data.batch_size", 1, "use a positive number of images per batch")
    _int(cfg, "data.eval_batch_size", 1, "use a positive number of images per batch",
         allow_none=True)
    _int(cfg, "trainer.max_epochs", 1, "use at least 1 epoch")
    _int(cfg, "data.num_workers", 0, "use 0 or more loader processes", allow_none=True)
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    minimum = int(OmegaConf.select(cfg, "backbone.min_image_size", default=16) or 16)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"data.image_size={size}: use a size in pixels (or null to keep "
                            "the file's)")
        if size < minimum:
            raise UserError(f"data.image_size={size}: backbone={cfg.backbone.name} needs at "
                            f"least {minimum} px")
    n = OmegaConf.select(cfg, "model.ensemble_size", default=1)
    ensemble = "ensemble" in str(OmegaConf.select(cfg, "model.name", default=""))
    if isinstance(n, bool) or not isinstance(n, int) or n < (2 if ensemble else 1):
        raise UserError(f"model.ensemble_size={n}: an ensemble needs at least 2 members"
                        if ensemble else f"model.ensemble_size={n}: use 1")
    lam = OmegaConf.select(cfg, "model.lambda_consistency", default=0.0)
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or lam < 0:
        raise UserError(f"model.lambda_consistency={lam}: use a number >= 0")
    # A string such as resume=maybe would be truthy and silently resume.
    for key, allow_none in (("resume", False), ("skip_completed", True)):
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, bool) and not (value is None and allow_none):
            raise UserError(f"{key}={value}: use true or false"
                            + (" (or null for the default)" if allow_none else ""))


# Flags of Hydra's command line that take a value (everything else without "=" is a flag).
_VALUE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn",
                "--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun")


_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


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


def preflight(argv: Sequence[str]) -> DictConfig:
    """Compose the command line's config (the first job of a sweep) and validate it, so that
    an unknown key or a bad value is one :class:`UserError` line before Hydra starts (Hydra
    prints a multi-line block and exits 1). Returns it, with its ``hydra`` node."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

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
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"{_first_line(exc)}; check the override's syntax") from None
    first = []
    for o in parsed:
        if o.is_sweep_override():
            value = _first_value(o)
            if value is None:
                continue  # a sweeper-only expression: left to the sweeper
            first.append(f"{o.get_key_element()}={value}")
        else:
            first.append(o.input_line)
    try:
        cfg = compose(first, return_hydra_config=True, config_dirs=config_dirs(argv)[1:])
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_composition_error(exc)) from None
    validate(cfg)
    check_trackers(cfg)
    if OmegaConf.select(cfg, "launcher.name") == "local":
        # The launcher's job count is a resolver of the hydra node: a bad value would surface
        # as a traceback when Hydra resolves it; checked here, it is one line.
        launcher = cfg.launcher
        _local_n_jobs(launcher.get("n_jobs"), launcher.get("jobs_per_gpu", 1),
                      launcher.get("cpu_threads_per_job"))
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


def check_trackers(cfg: DictConfig) -> None:
    """``logger=mlflow|wandb`` without its package: one line naming the extra, before a run
    trains (Lightning would raise only when the Trainer is built)."""
    node = cfg.get("logger")
    if not node:
        return
    nodes = [node] if "_target_" in node else [c for c in node.values() if c]
    for c in nodes:
        name = str(c.get("_target_", "")).rsplit(".", 1)[-1]
        if name not in TRACKER_PACKAGES:
            continue
        option, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"logger={option} needs the '{package}' package; install the "
                            "tracking extra: pip install 'mimic-runner[tracking]'")


def check_optimized_metric(cfg: DictConfig) -> None:
    """A sweeper optimises what each job returns, ``metrics[optimized_metric]``: it must be a
    validation value (choosing settings by a test value would leak the test split into the
    results reported on it), and one the runs record."""
    key = cfg.get("optimized_metric")
    if key is None:
        return  # the jobs return nothing: a plain grid (the basic sweeper ignores it)
    key = str(key)
    if not key.startswith("val/"):
        raise UserError(f"optimized_metric={key}: a sweeper may only optimise a validation "
                        "value (val/acc, val/auroc, val/objective, ...), never a test one")
    plain = key in _PLAIN_VAL_METRICS or key.startswith("val/acc_member_")
    if not plain and not OmegaConf.select(cfg, "explain.val_explanations", default=False):
        raise UserError(f"optimized_metric={key} is computed only with "
                        "explain.val_explanations=true (the validation split explained)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


def _composition_error(exc: BaseException) -> str:
    msg = _first_line(exc)
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
        msg = f"{msg}: {_first_line(cause)}"
    return f"{msg}; `mimic-run --cfg job` shows the composed config"
