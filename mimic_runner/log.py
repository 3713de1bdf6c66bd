"""Output: Python ``logging`` for what happens, one rich console for the terminal.

Status and warnings go through ``logging.getLogger(__name__)``; :class:`ConsoleHandler` is the
one handler that shows them on stderr (mimic-runner's INFO and everyone's WARNING), Hydra's
job logging adds ``run.log`` (INFO) for ``mimic-run``. A command's *result* (a table, the path
it wrote) is printed on :data:`stdout`; progress bars draw on :data:`console` (stderr).
:func:`progress_bar` is the one progress bar; :func:`quiet_lightning` drops Lightning's
console noise no user can act on.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

# soft_wrap: status lines stay whole in logs (grep-able), whatever the width.
console = Console(stderr=True, soft_wrap=True)
# Results; 160 columns when stdout is not a terminal (a log file), so tables do not wrap.
stdout = Console() if Console().is_terminal else Console(width=160)

_OWN = "mimic_runner"


def progress_bar(remaining: bool = False, disable: bool = False) -> Progress:
    """The one progress bar: description, bar, done/total and the elapsed (``remaining``: the
    estimated remaining) time, drawn on :data:`console` and removed when done. Use it as a
    context manager; ``disable`` hides it (e.g. when stderr is no terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeRemainingColumn() if remaining else TimeElapsedColumn()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), clock,
                    console=console, transient=True, disable=disable)


class _OwnInfoOthersWarning(logging.Filter):
    """Our INFO lines are status a user wants (skipped, resumed, wrote); libraries' INFO
    (Lightning's device banner, ...) belongs in run.log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(_OWN)


class ConsoleHandler(logging.Handler):
    """The console handler of every command (Hydra's job logging names it by class path): one
    line per record on the shared rich :data:`console`, never wrapped (a status line stays one
    line in a log file, whatever the width), warnings prefixed ``warning:``."""

    def __init__(self, level: int | str = logging.INFO, **_ignored: object) -> None:
        # _ignored: a stream Hydra's default logging config names; the console is ours.
        super().__init__(level=level)
        self.addFilter(_OwnInfoOthersWarning())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.WARNING and not msg.startswith(("warning:", "error:")):
                msg = f"{'error' if record.levelno >= logging.ERROR else 'warning'}: {msg}"
            style = "red" if record.levelno >= logging.ERROR else (
                "yellow" if record.levelno >= logging.WARNING else None)
            console.print(msg, style=style, soft_wrap=True, markup=False, highlight=False)
        except Exception:  # a handler must never raise into the code that logs
            self.handleError(record)


def setup_cli_logging(level: int = logging.INFO) -> None:
    """For the commands Hydra does not configure (mimic-report, -explain, -data, ...)."""
    root = logging.getLogger()
    if not any(isinstance(h, ConsoleHandler) for h in root.handlers):
        root.addHandler(ConsoleHandler())
    root.setLevel(min(root.level or logging.WARNING, level))


class _DropAdverts(logging.Filter):
    """Lightning prints a cloud-logging advert on every Trainer; it is noise in a sweep log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence console noise no user can act on (library adverts and internal deprecations)."""
    # rank_zero_info logs on this logger; a logger's filters see only its own records.
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in logger.filters):
        logger.addFilter(_DropAdverts())
    # Lightning prints its INFO lines through a handler of its own; once ours are set up
    # (mimic-run's logging), they go to run.log through the root logger instead.
    if any(isinstance(h, ConsoleHandler) for h in logging.getLogger().handlers):
        lightning = logging.getLogger("lightning")
        for h in list(lightning.handlers):
            if type(h) is logging.StreamHandler:
                lightning.removeHandler(h)
    # On a machine with SLURM installed Lightning warns on every run that `srun` is not used;
    # submitit launches our jobs itself (launcher=slurm), so the hint only misleads.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")
    # Lightning 2.6's own use of a deprecated torch pytree API, warned on every Trainer.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
