"""Helper stacks: a call off the caller's greenlet behaves as one made in place."""

from __future__ import annotations

import contextvars
import time

import gevent
import pytest
from gevent import get_hub
from greenlet import getcurrent

from llmsim.cli import stacks
from llmsim.cli.stacks import call_off_stack

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def _pool() -> list:
    return getattr(get_hub(), stacks._ATTR, [])


def test_returns_what_the_call_returns_from_another_greenlet():
    me = getcurrent()
    where = call_off_stack(lambda a, b: (getcurrent(), a + b), 2, 3)
    assert where[0] is not me and where[1] == 5


def test_raises_what_the_call_raised():
    err = KeyError("x")

    def fail() -> None:
        raise err

    with pytest.raises(KeyError) as info:
        call_off_stack(fail)
    assert info.value is err
    assert any(tb.name == "fail" for tb in info.traceback)  # the traceback reaches into the call


def test_base_exceptions_pass_through_too():
    def leave() -> None:
        raise gevent.GreenletExit()

    with pytest.raises(gevent.GreenletExit):
        call_off_stack(leave)
    assert call_off_stack(lambda: 1) == 1  # the helper survived it


def test_the_caller_context_is_lent_to_the_call():
    def read_and_set() -> str:
        seen = VAR.get()
        VAR.set("set inside")
        return seen

    def caller() -> tuple[str, str]:
        VAR.set("caller's")
        return call_off_stack(read_and_set), VAR.get()

    assert gevent.spawn(caller).get() == ("caller's", "set inside")  # as if called in place
    assert VAR.get() == "unset"


def test_helpers_are_reused_and_blocking_suspends_only_the_caller():
    call_off_stack(lambda: None)
    idle = len(_pool())
    assert idle >= 1
    for _ in range(5):
        call_off_stack(lambda: None)
    assert len(_pool()) == idle  # sequential calls take the same helper

    def slow(k: int) -> int:
        gevent.sleep(0.2)
        return k

    t0 = time.monotonic()
    calls = [gevent.spawn(call_off_stack, slow, k) for k in range(4)]
    gevent.joinall(calls, raise_error=True)
    assert [g.value for g in calls] == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 0.6  # they overlapped: one helper each
    assert len(_pool()) >= 4


def test_at_most_idle_max_helpers_are_kept(monkeypatch):
    monkeypatch.setattr(stacks, "IDLE_MAX", 2)
    _pool().clear()
    calls = [gevent.spawn(call_off_stack, gevent.sleep, 0.05) for _ in range(5)]
    gevent.joinall(calls, raise_error=True)
    assert len(_pool()) == 2
    assert all(not g.dead for g in _pool())


def test_a_caller_killed_during_the_call_leaves_the_helper_usable():
    done = []

    def slow() -> None:
        gevent.sleep(0.1)
        done.append(1)

    caller = gevent.spawn(call_off_stack, slow)
    gevent.sleep(0.02)
    caller.kill()  # the helper goes on with the call, then has nobody to return to
    gevent.sleep(0.2)
    assert done == [1]
    assert call_off_stack(lambda: "still serving") == "still serving"
