"""locustfiles/chat.py plus a probe of the test phase: it prints `test phase: S s`, from the moment
Locust starts the test (test_start) to the moment it begins to stop it (test_stopping)."""

import time

from locust import events

from llmsim.loadtest.users import ChatCompletionsUser

_T: dict[str, float] = {}


class ChatUser(ChatCompletionsUser):
    pass


@events.test_start.add_listener
def _start(**_kw):
    _T["start"] = time.monotonic()


@events.test_stopping.add_listener
def _stopping(**_kw):
    _T.setdefault("stop", time.monotonic())


@events.quitting.add_listener
def _print(**_kw):
    if "start" in _T and "stop" in _T:
        print(f"test phase: {_T['stop'] - _T['start']:.3f} s", flush=True)
