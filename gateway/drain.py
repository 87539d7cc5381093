"""A gateway's shutdown as its requests see it: draining (``/readyz`` answers 503), then, once the
shutdown timeout has passed, the requests still running told to end.

The HTTP server (:class:`gateway.server.DrainingServer`) begins the drain on SIGTERM and ends what is
left when ``--shutdown-timeout`` runs out. A request that can end cleanly registers with :meth:`Drain.hold`:
a stream then ends with an OpenAI error event and ``data: [DONE]``, a response not yet begun with a 503,
rather than a connection cut when the server cancels what remains.

Ending a request cancels its task at an ``await`` where the request can take the cancellation back: any
of them for a request that runs its whole exchange inside its hold (the proxy), or only the waits passed
through :meth:`Hold.interruptible` (a stream whose writes happen outside its own code).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from gateway.errors import ShuttingDown

__all__ = ["Drain", "Hold", "shutdown_error"]

T = TypeVar("T")


def shutdown_error() -> ShuttingDown:
    """What a request ended by the drain tells its client."""
    return ShuttingDown("The server is shutting down and the request did not finish in time; retry it.")


class Hold:
    """One request the drain may end. Its task is cancelled where :attr:`cancellable`; the request, seeing
    :attr:`ended`, undoes the cancellation (:meth:`absorb`) and ends with :func:`shutdown_error` instead.
    Once released, the drain leaves it alone."""

    def __init__(self, task: asyncio.Task, holds: set["Hold"], cancellable: bool) -> None:
        self.task = task
        self.cancellable = cancellable
        self.ended = False
        self._holds = holds

    def end(self) -> None:
        """Mark the request as ended by the drain, and cancel its task if it may be cancelled now."""
        if not self.ended:
            self.ended = True
            if self.cancellable:
                self.task.cancel()

    def absorb(self) -> bool:
        """Inside ``except CancelledError``: True (and the cancellation undone) when the drain caused it."""
        if self.ended:
            self.task.uncancel()
        return self.ended

    async def interruptible(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; :func:`shutdown_error` is raised instead if the drain ends the request first."""
        if self.ended:
            raise shutdown_error()
        self.cancellable = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self.absorb():
                raise shutdown_error() from None
            raise
        finally:
            self.cancellable = False

    def release(self) -> None:
        """The drain may no longer end this request."""
        self._holds.discard(self)


class Drain:
    """Whether the gateway is draining, and the requests it will end when the shutdown timeout runs out."""

    def __init__(self) -> None:
        self.draining = False
        self._holds: set[Hold] = set()

    def begin(self) -> None:
        """Stop being ready: ``/readyz`` answers 503 from now on (requests are still served)."""
        self.draining = True

    @contextlib.contextmanager
    def hold(self, cancellable: bool = True) -> Iterator[Hold]:
        """Register the current task's request for as long as the block runs; with ``cancellable`` false,
        it is ended only inside :meth:`Hold.interruptible` waits."""
        hold = Hold(asyncio.current_task(), self._holds, cancellable)
        self._holds.add(hold)
        try:
            yield hold
        finally:
            hold.release()

    def end_requests(self) -> int:
        """End every registered request (each answers :func:`shutdown_error`); how many there were."""
        holds = list(self._holds)
        for hold in holds:
            hold.end()
        return len(holds)
