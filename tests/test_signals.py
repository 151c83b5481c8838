"""Signals: cleanup that must finish holds SIGINT and SIGTERM until it has."""

from __future__ import annotations

import os
import signal

import pytest

from acbuild.signals import Terminated, deferred, terminate_as_exit


def test_deferred_holds_sigterm_until_the_block_ends() -> None:
    done = []
    with terminate_as_exit(), pytest.raises(Terminated), deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_deferred_holds_sigint_until_the_block_ends() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_deferred_without_signals_changes_nothing() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with deferred():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
