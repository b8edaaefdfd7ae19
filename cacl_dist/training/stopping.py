"""Stopping a run on request: signals recorded from the first moment on, and workers that stop with their launcher.

- :class:`StopSignals`: SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) ask the run to checkpoint and stop; a
  signal that arrives before the trainer exists is remembered and handed to it once it does.
- :func:`watch_parent`: under torchrun, a worker whose launcher dies sends itself SIGTERM, so it
  checkpoints and stops instead of training on unsupervised.
- :class:`StopRequested`: raised where a requested stop interrupts a phase.

Where the run waits, and how a stop request ends the wait: the image check asks after every file
(a FIFO or device named like an image is refused, never read); extraction asks before every batch;
training votes after every step; a collective (the label broadcast, run_on_main, the vote itself)
waits at most ``dist.timeout_min`` and the request is acted on right after it (Python runs the
handler once the wait returns, and the request is never lost); a resuming rank waits at most
``RESUME_WAIT_S`` for the checkpoint; the run folder lock never waits. DataLoader workers leave the
process group and ignore SIGINT/SIGUSR1, so a signal sent to the whole group reaches the main process only.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

from cacl_dist.errors import StopRequested

STOPPED_EXIT_CODE = 3
"""Exit status of a run that checkpointed and stopped on SIGTERM/SIGUSR1 (resume by running it again)."""
INTERRUPTED_EXIT_CODE = 130
"""Exit status of a run that checkpointed and stopped on SIGINT (Ctrl-C), as shells report 128 + SIGINT."""


class StopSignals:
    """While entered, SIGTERM, SIGUSR1 and SIGINT call ``target()`` (see :meth:`attach`) instead of ending the
    process; the first one received is kept in :attr:`received`. Handlers are installed only in the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._target: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
        if self._target is not None:
            self._target()

    def attach(self, target: Callable[[], None]) -> None:
        """Send stop requests to `target` from now on (at once when a signal came already)."""
        self._target = target
        if self.received is not None:
            target()

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 3 after SIGTERM/SIGUSR1."""
        return INTERRUPTED_EXIT_CODE if self.received == signal.SIGINT else STOPPED_EXIT_CODE

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()


class AgreedStop:
    """A stop request that every rank honours at the same point: set locally (a signal handler may call
    :meth:`request`), acted on through collective checks that all ranks make at the same places.

    A request can never be lost: :meth:`request` only ever sets ``_asked`` (never reset, never assigned from
    a vote), and a vote's result is only ever OR-ed into ``_agreed``. A signal handler that Python runs while a
    vote blocks, or between the vote and its result being stored, therefore still counts at the next vote.
    """

    def __init__(self) -> None:
        self._asked = False     # asked on this rank; written only as True (by request(), e.g. in a signal handler)
        self._agreed = False    # a vote found a request on some rank; the same on every rank
        self.honoured = False   # the run returned early because of it

    @property
    def requested(self) -> bool:
        """Asked on this rank, or agreed by all (not yet a collective decision on its own)."""
        return self._asked or self._agreed

    def request(self) -> None:
        """Ask for a stop (safe in a signal handler: one store of True, nothing read first)."""
        self._asked = True

    def agreed(self) -> bool:
        """Whether any rank was asked to stop by the time of this vote or an earlier one (a collective call: a
        CPU all-reduce of one number). Every rank gets the same answer at the same call."""
        from cacl_dist.distributed import comm

        if comm.any_rank(self._asked):
            self._agreed = True
        return self._agreed

    def check(self) -> None:
        """Raise StopRequested on every rank when any rank was asked to stop (a collective call)."""
        if self.agreed():
            raise StopRequested("stop requested")

    def phase(self, run: Callable[[], object]) -> None:
        """Run one phase of every rank; a stop asked for on any rank during it stops all of them right after it.

        A phase that notices the request itself (e.g. between extraction batches) raises StopRequested
        on this rank and leaves no result; the other ranks finish theirs, then all agree here.
        """
        try:
            run()
        except StopRequested:
            self.request()
        self.check()


def under_torchrun(environ: dict | None = None) -> bool:
    """True in a worker started by torchrun's agent (it sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in (os.environ if environ is None else environ)


def watch_parent(interval_s: float = 1.0, environ: dict | None = None) -> threading.Thread | None:
    """Under torchrun, send this process SIGTERM once its parent (the agent) is gone; returns the watching
    thread, or None (and does nothing) when not under torchrun.

    The agent normally forwards signals and stops its workers itself; this covers an agent killed
    with SIGKILL or crashing, which would otherwise leave the workers training and writing. A plain
    ``python -m cacl_dist.train`` is never watched, so a run started with nohup outlives its shell.
    """
    if not under_torchrun(environ):
        return None
    parent = os.getppid()

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=poll, name="cacl-parent-watch", daemon=True)
    thread.start()
    return thread


__all__ = ["AgreedStop", "INTERRUPTED_EXIT_CODE", "STOPPED_EXIT_CODE", "StopRequested", "StopSignals", "under_torchrun",
           "watch_parent"]
