"""Stop long commands cleanly on SIGTERM and SIGINT: the signal sets a flag, the command checks it
at a safe point (``vlmrl train``: after an env step), saves its work and exits with 128 + the
signal number (143 for SIGTERM, 130 for SIGINT).

::

    with StopRequest() as stop:           # installs the handlers, restores the old ones after
        for item in work:
            if stop.requested:
                save(); raise stop.stopped("stopped by SIGTERM after checkpoint ...")
            do(item)

A second signal of either kind stops at once: the default action is restored and the signal
sent again (no cleanup). ``StopRequest`` only works from the main thread (Python delivers
signals there); elsewhere :meth:`StopRequest.install` leaves the handlers alone.

Why SIGTERM used to be ignored: SDL, which pygame initialises when a Gymnasium classic-control
env renders (``pygame.init()`` in their ``render``), installs its own SIGINT and SIGTERM handlers
that turn the signals into SDL quit events nobody reads, so ``kill`` and ``timeout`` did nothing
to ``vlmrl train`` on a classic-control env (vlmrl's CartPole rendered through pygame until it
drew its frames with numpy). SDL installs them only where the handler is still the default, and
not at all with ``SDL_NO_SIGNAL_HANDLERS=1``: ``import vlmrl`` sets that
(``vlmrl.headless.configure_headless``, unless set already), so the env workers and any process
started after it inherit it, and
:class:`StopRequest` installs its handlers before any env exists.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """A command stopped by a signal after saving its work; ``exit_code`` is 128 + the signal
    number, the message says what was saved and how to continue."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag a long-running loop checks.

    Attributes:
        signum: the first stop signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self) -> bool:
        """``requested``, as a callable for code that takes a ``should_stop`` hook."""
        return self.requested

    @property
    def name(self) -> str | None:
        """``"SIGTERM"`` / ``"SIGINT"``, or None."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (the shell's code for a process ended by that signal)."""
        return 128 + (self.signum or 0)

    def reason(self) -> str | None:
        """``"SIGTERM"`` once requested (for callbacks that stop on a reason), else None."""
        return self.name

    def stopped(self, message: str) -> Stopped:
        """The :class:`Stopped` to raise once the work is saved."""
        return Stopped(message, self.exit_code)

    def install(self) -> StopRequest:
        """Install the handlers (main thread only; a no-op elsewhere). Returns self."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before :meth:`install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Asked twice: stop now, the way the signal would without us.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        # os.write, not print: a handler may run while the main thread is inside print().
        os.write(2, f"\n{name} received: stopping after the current step (send it again to stop at once)\n".encode())


__all__ = ["STOP_SIGNALS", "StopRequest", "Stopped"]
