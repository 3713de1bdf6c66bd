"""Readers for the watchdog tests, in a module a fresh interpreter imports quickly (the test
module itself imports torch)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from mimic_runner.errors import DatasetError


def answer(value: int, progress: Callable[[str], None]) -> int:
    progress("key 'answer'")
    return value * 2


def stuck(progress: Callable[[str], None]) -> None:
    progress("key 'x'")
    time.sleep(120)  # as libhdf5 looping on a damaged heap, which no signal interrupts


def crash(progress: Callable[[str], None]) -> None:
    progress("key 'y'")
    os.kill(os.getpid(), signal.SIGSEGV)


def refuse(progress: Callable[[str], None]) -> None:
    progress("key 'z'")
    raise DatasetError("f.h5: key 'z': refused in words")
