"""The one place that knows how configs are found, composed and checked.

- :mod:`.compose`: :func:`register` adds the resolvers the shipped configs use and the ``sweep``
  group; :func:`compose` gives the config ``mimic-run <overrides>`` would see, for the library,
  ``mimic-bench``, the feedback fixtures and the tests; :func:`load_run_config` reads a run's.
- :mod:`.argv`: the command line (:func:`flags_first`, :func:`check_argv`, the pre-flight).
- :mod:`.validate`: values, the run-wide ones here and each section's through its
  ``_target_`` class's ``validate_config``.
- :mod:`.resources`: the ``local`` launcher's job count (a resolver).
"""

from mimic_runner.config.argv import (
    LAUNCHER_PLUGINS,
    SWEEPER_PLUGINS,
    _composition_error,
    check_argv,
    check_group_options,
    check_launcher_plugin,
    config_dirs,
    first_line,
    flags_first,
    group_options,
    preflight,
)
from mimic_runner.config.compose import (
    compose,
    load_run_config,
    register,
    run_dirname,
    split_overrides,
)
from mimic_runner.config.validate import (
    SEED_MAX,
    check_optimized_metric,
    check_trackers,
    validate,
)

__all__ = ["LAUNCHER_PLUGINS", "SEED_MAX", "SWEEPER_PLUGINS", "_composition_error",
           "check_argv", "check_group_options", "check_launcher_plugin",
           "check_optimized_metric", "check_trackers", "compose", "config_dirs", "first_line",
           "flags_first", "group_options", "load_run_config", "preflight", "register",
           "run_dirname", "split_overrides", "validate"]
