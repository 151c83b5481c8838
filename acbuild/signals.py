"""CLI support, signals: SIGTERM raised as an exception, so cleanup runs as after Ctrl-C.

Python's default for SIGTERM kills the process outright: no ``finally`` runs, so a build's
work directory and a run's rootfs copy would stay behind. While ``terminate_as_exit`` is
active, SIGTERM becomes ``SystemExit(143)`` (128 + 15, what a shell reports) in the main thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

EXIT_SIGTERM = 128 + int(signal.SIGTERM)


class Terminated(SystemExit):
    """SIGTERM arrived; unwinds the stack like KeyboardInterrupt and exits 143."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(EXIT_SIGTERM)


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises Terminated while active. A no-op off the main thread (Python only
    delivers signals there) or when someone else already handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def install_sigterm_handler() -> None:
    """For ``cli.main``: SIGTERM raises Terminated for the rest of the process's life."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them again.

    For cleanup that must not be cut in half (removing a work directory): a signal that
    arrives meanwhile still ends the process, just after the cleanup instead of during it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {held: signal.signal(held, hold) for held in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        for signum in dict.fromkeys(pending):
            os.kill(os.getpid(), signum)  # to whatever handles it now: raise, or the default


@contextmanager
def owned(make: Callable[[], T], remove: Callable[[T], None]) -> Iterator[T]:
    """What ``make()`` returns (a temporary file or directory), given to ``remove`` however
    the block ends.

    Both run with SIGINT and SIGTERM held: a signal can be raised as an exception between
    any two bytecodes, so one that came after the entry was made but before a ``try`` owned
    it would leave it behind for good. Here the entry is owned before the signal is raised.
    """
    made: list[T] = []
    try:
        with deferred():
            made.append(make())
        yield made[0]
    finally:
        if made:
            with deferred():
                remove(made[0])
