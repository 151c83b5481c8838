"""Signals: cleanup that must finish holds SIGINT and SIGTERM until it has."""

from __future__ import annotations

import os
import signal

import pytest

from acbuild.signals import Terminated, deferred, owned, terminate_as_exit


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


def _interrupted_now() -> None:
    """A SIGINT arrives: Python raises it at the next bytecode boundary it checks."""
    os.kill(os.getpid(), signal.SIGINT)


def test_owned_removes_what_was_made_when_the_signal_comes_while_it_is_made() -> None:
    removed: list[str] = []

    def make() -> str:
        _interrupted_now()
        return "entry"

    with pytest.raises(KeyboardInterrupt), owned(make, removed.append):
        pytest.fail("the block runs only when no signal is pending")
    assert removed == ["entry"]


def test_owned_finishes_removing_when_the_signal_comes_while_it_removes() -> None:
    removed: list[str] = []

    def remove(entry: str) -> None:
        _interrupted_now()
        removed.append(entry)

    with pytest.raises(KeyboardInterrupt), owned(lambda: "entry", remove):
        pass
    assert removed == ["entry"]


def test_owned_removes_nothing_when_making_failed() -> None:
    removed: list[str] = []

    def make() -> str:
        raise OSError("no space")

    with pytest.raises(OSError), owned(make, removed.append):
        pass
    assert removed == []
