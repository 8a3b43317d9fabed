"""SIGINT (Ctrl-C) and SIGTERM (what schedulers send on a timeout) stop a command the same way.

Outside `deferred()` the signal raises Interrupted at once. Inside it (while batches are with FCM)
the signal is only noted: the sender claims nothing more, settles what is in flight, then raises.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from sender.errors import ExitCode


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED


class Stop:
    """Whether a stop was asked for; install() routes SIGINT and SIGTERM here."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = 0

    def install(self) -> Stop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        if not self._deferring:
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
