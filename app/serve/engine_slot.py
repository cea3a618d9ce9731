"""One model's engine behind `roost serve` (pool.py holds them): one generation at a
time, and a new process when the engine's dies.

Requests wait their turn at a Gate (a bounded queue, first come first served). Each
generation runs the engine's blocking stream on its own thread and hands its events to the
event loop; a client that goes away becomes a Cancel, so the engine is free for the next
request within a token. When the engine's process dies (backends/child.py), the model is
loaded again in a new one while requests are told to come back shortly.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from typing import AsyncIterator, Callable, Iterator

from starlette.requests import Request

from roost.backends.base import Cancel, Done, Engine, Event, Progress
from roost.errors import EngineCrashed
from roost.serve.openai_api import ApiError

DEFAULT_QUEUE = 16
log = logging.getLogger("roost.serve")
_END = object()


class Gate:
    """The engine runs one generation at a time; up to `queue` requests wait their turn
    (first come, first served) and the rest are told to come back later."""

    def __init__(self, queue: int):
        self.queue = queue
        self.waiting = 0
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def enter(self) -> None:
        if self.busy and self.waiting >= self.queue:
            raise ApiError(503, f"the server is busy: one answer is running and {self.waiting} are waiting; "
                                "try again shortly", type="server_error", code="server_busy")
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self._lock.release()


# Time to first token on a local box: tens of milliseconds for a short prompt on a GPU, a
# minute for a long one read on a CPU.
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Counters:
    def __init__(self) -> None:
        self.started = time.time()
        self.answered = self.cancelled = self.refused = self.failed = 0
        self.crashes = 0  # times the engine's process died
        self.last = None  # the Stats of the last answer
        # Summed over every answer, cancelled ones too: their tokens were read and written.
        self.prompt_tokens = self.cached_tokens = self.generated_tokens = 0
        self.prefill_s = self.decode_s = 0.0
        # Answers by time to first token: ttft_counts[i] of them within TTFT_BUCKETS_S[i]
        # and over the one before (the last, over all of them); ttft_s their sum.
        self.ttft_counts = [0] * (len(TTFT_BUCKETS_S) + 1)
        self.ttft_s = 0.0

    def count(self, done: Done) -> None:
        stats = self.last = done.stats
        if stats.stop_reason == "cancelled":
            self.cancelled += 1
        else:
            self.answered += 1
        self.prompt_tokens += stats.prompt_tokens
        self.cached_tokens += stats.cached_tokens
        self.generated_tokens += stats.generated_tokens
        self.prefill_s += stats.prefill_s
        self.decode_s += stats.decode_s
        if stats.generated_tokens:  # no first token, no time to it
            self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS_S, stats.ttft_s)] += 1
            self.ttft_s += stats.ttft_s


class EngineSlot:
    """The engine, its state ("ok", "loading" again after a crash, "crashed": and that
    failed too), the answers running on it, and the counts /metrics reports."""

    def __init__(self, engine: Engine, queue: int = DEFAULT_QUEUE):
        self.engine = engine
        self.info = engine.info()
        self.gate = Gate(queue)
        self.counters = Counters()
        self.running: set[Cancel] = set()
        self.state = "ok"  # "loading": again, after a crash; "crashed": and that failed too (the next request retries)
        self.crash: str | None = None  # the last crash, as said
        self.last_used = time.monotonic()  # when an answer last ended (or a request came): the pool's keep-alive
        self._state_lock = threading.Lock()

    def stop_all(self) -> None:
        """Cancel every running answer: the server is going down."""
        for cancel in list(self.running):
            cancel.set()

    def crashed(self, error: EngineCrashed) -> None:
        """The engine's process died: load the model again in a new one. Any thread may
        find it dead (an answer, a memory reading); the first to tell starts the reload."""
        with self._state_lock:
            if self.state != "ok" or getattr(self.engine, "alive", False):  # known, or old news
                return
            self.counters.crashes += 1
            self.crash = str(error)
            log.error("%s; loading the model again", error)
        self._reload()

    def _reload(self) -> None:
        with self._state_lock:
            if self.state == "loading":
                return
            self.state = "loading"
        threading.Thread(target=self._load_again, name="roost-reload", daemon=True).start()

    def _load_again(self) -> None:
        try:
            self.engine.restart()
            self.info = self.engine.info()
        except Exception as e:  # it crashed loading too: the next request tries again
            log.error("could not load the model again: %s", e)
            self.crash, self.state = str(e), "crashed"
            return
        log.warning("the model is loaded again; serving")
        self.state = "ok"

    def check_ready(self) -> None:
        """While the engine loads again after a crash: 503, come back shortly."""
        if self.state == "ok":
            return
        if self.state == "crashed":
            self._reload()
        raise ApiError(503, f"the model is loading again after the engine crashed ({self.crash}); retry shortly",
                       type="server_error", code="engine_loading")

    async def generate(self, request: Request, run: Callable[[Cancel], Iterator[Event]]) -> AsyncIterator[Event]:
        """One generation, run on its own thread with its events handed to the event loop.
        Leaving early, or the client going away, cancels it; the gate opens for the next
        request only once the engine has actually stopped."""
        loop = asyncio.get_running_loop()
        cancel = Cancel()
        events: asyncio.Queue = asyncio.Queue()
        self.check_ready()
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        try:
            await self.gate.enter()
        except BaseException:
            watcher.cancel()
            raise
        if cancel.is_set():  # the client left while waiting its turn: nothing to answer
            self.gate.leave()
            self.counters.cancelled += 1
            return
        try:
            self.check_ready()  # the engine crashed while this one waited its turn
        except ApiError:
            self.gate.leave()
            watcher.cancel()
            raise

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is gone: the server stopped
                pass

        def produce() -> None:
            try:
                for event in run(cancel):
                    if isinstance(event, Progress):  # the API has no place for it
                        continue
                    if isinstance(event, Done):
                        self.counters.count(event)
                    put(event)
            except EngineCrashed as e:  # the reload starts before the next request gets its turn
                self.crashed(e)
                put(e)
            except BaseException as e:  # handed to the request, which answers with it
                put(e)
            finally:
                self.running.discard(cancel)
                self.last_used = time.monotonic()
                put(_END)
                try:
                    loop.call_soon_threadsafe(self.gate.leave)
                except RuntimeError:
                    pass

        self.running.add(cancel)
        threading.Thread(target=produce, name="roost-generate", daemon=True).start()
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # no effect once the stream has ended; stops one the client left
            watcher.cancel()


async def _cancel_on_disconnect(request: Request, cancel: Cancel) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()
