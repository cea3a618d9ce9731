"""`roost serve`: one resident engine behind an OpenAI-compatible HTTP API.

Starlette routes and uvicorn serves; this module holds only what sits between HTTP and
the Engine: one generation at a time with a bounded queue, the engine's blocking
stream run on its own thread and handed to the event loop, and a client that goes
away turned into a Cancel, so the engine is free for the next request within a token.

The engine runs in a process of its own (backends/child.py). When that process dies, the
answers in flight get 500 `engine_crashed`, the engine is loaded again in a new process,
requests meanwhile get 503 with Retry-After (and /health says "loading"), then it serves
again.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import socket
import threading
import time
import uuid
from typing import AsyncIterator, Callable, Iterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from roost import __version__
from roost.serve import openai_api
from roost.backends.base import Cancel, Done, Engine, Event, Token
from roost.errors import ContextOverflow, EngineCrashed, RoostError, TemplateError, UsageError
from roost.serve.openai_api import ApiError

MAX_BODY = 32 * 2**20  # far beyond any context; a guard against memory, not a limit on prompts
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


class Counters:
    def __init__(self) -> None:
        self.started = time.time()
        self.answered = self.cancelled = self.refused = self.failed = 0
        self.crashes = 0  # times the engine's process died
        self.last = None  # the Stats of the last answer

    def count(self, done: Done) -> None:
        self.last = done.stats
        if done.stats.stop_reason == "cancelled":
            self.cancelled += 1
        else:
            self.answered += 1


class Server:
    """The routes, over one engine."""

    def __init__(self, engine: Engine, model_id: str, *, api_key: str | None = None, queue: int = DEFAULT_QUEUE):
        self.engine, self.model_id, self.api_key = engine, model_id, api_key
        self.info = engine.info()
        self.limit = max(self.info.n_ctx, self.info.n_ctx_train or 0)
        self.gate = Gate(queue)
        self.counters = Counters()
        self.running: set[Cancel] = set()
        self.state = "ok"  # "loading": again, after a crash; "crashed": and that failed too (the next request retries)
        self.crash: str | None = None  # the last crash, as said
        self._state_lock = threading.Lock()
        guarded = self._guarded
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", guarded(self.models)),
                Route("/v1/chat/completions", guarded(self.chat), methods=["POST"]),
                Route("/v1/completions", guarded(self.completions), methods=["POST"]),
                Route("/metrics", guarded(self.metrics)),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
        )

    def stop_all(self) -> None:
        """Cancel every running answer: the server is going down."""
        for cancel in list(self.running):
            cancel.set()

    # -- the engine's process dying -------------------------------------------------------

    def _crashed(self, error: EngineCrashed) -> None:
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

    def _check_ready(self) -> None:
        """While the engine loads again after a crash: 503, come back shortly."""
        if self.state == "ok":
            return
        if self.state == "crashed":
            self._reload()
        raise ApiError(503, f"the model is loading again after the engine crashed ({self.crash}); retry shortly",
                       type="server_error", code="engine_loading")

    # -- plumbing -----------------------------------------------------------------------

    def _guarded(self, handler):
        async def guarded(request: Request):
            try:
                self._check_key(request)
                return await handler(request)
            except ApiError as e:
                if e.status == 503:
                    self.counters.refused += 1
                elif e.status >= 500:
                    self.counters.failed += 1
                headers = {"Retry-After": "1"} if e.status == 503 else None
                return JSONResponse(e.body(), status_code=e.status, headers=headers)
        return guarded

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def _http_error(self, request: Request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)

    async def _internal_error(self, request: Request, exc: Exception):
        # The traceback goes to the server's log; the client gets OpenAI's shape, not HTML.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        self.counters.failed += 1
        return JSONResponse(ApiError(500, f"the server failed: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    async def _body(self, request: Request) -> dict:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY // 2**20} MiB")
        return openai_api.parse_body(bytes(raw))

    async def _events(self, request: Request, run: Callable[[Cancel], Iterator[Event]]) -> AsyncIterator[Event]:
        """One generation, run on its own thread with its events handed to the event loop.
        Leaving early, or the client going away, cancels it; the gate opens for the next
        request only once the engine has actually stopped."""
        loop = asyncio.get_running_loop()
        cancel = Cancel()
        events: asyncio.Queue = asyncio.Queue()
        self._check_ready()
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
            self._check_ready()  # the engine crashed while this one waited its turn
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
                    if isinstance(event, Done):
                        self.counters.count(event)
                    put(event)
            except EngineCrashed as e:  # the reload starts before the next request gets its turn
                self._crashed(e)
                put(e)
            except BaseException as e:  # handed to the request, which answers with it
                put(e)
            finally:
                self.running.discard(cancel)
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

    # -- routes ---------------------------------------------------------------------------

    async def health(self, request: Request):
        """"ok"; or "loading" (the model, again after a crash) or "crashed" (and that
        failed), both 503 with Retry-After, as load balancers expect."""
        body = {"status": self.state, "model": self.model_id, "busy": self.gate.busy, "waiting": self.gate.waiting,
                "crashes": self.counters.crashes}
        if self.state == "ok":
            return JSONResponse(body)
        return JSONResponse({**body, "crash": self.crash}, status_code=503, headers={"Retry-After": "1"})

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": int(self.counters.started), "owned_by": "roost"}]})

    async def metrics(self, request: Request):
        reading = None
        if self.state == "ok":
            try:
                reading = (await anyio.to_thread.run_sync(self.engine.memory)).as_dict()
            except EngineCrashed as e:  # found dead between answers
                self._crashed(e)
        c = self.counters
        return JSONResponse({
            "roost": __version__,
            "model": self.model_id,
            "uptime_s": round(time.time() - c.started, 3),
            "state": self.state,
            "crashes": c.crashes,
            "engine": self.info.as_dict(),
            "memory": reading,
            "requests": {"running": int(self.gate.busy), "waiting": self.gate.waiting, "answered": c.answered,
                         "cancelled": c.cancelled, "refused": c.refused, "failed": c.failed},
            "last": c.last.as_dict() if c.last else None,
        })

    async def chat(self, request: Request):
        req = openai_api.chat_request(await self._body(request), self.model_id, self.limit)
        return await self._answer(request, req, lambda cancel: self.engine.stream(req.messages, req.params, cancel),
                                  _ChatShape(self.model_id))

    async def completions(self, request: Request):
        req = openai_api.completion_request(await self._body(request), self.model_id, self.limit)
        return await self._answer(request, req, lambda cancel: self.engine.complete(req.prompt, req.params, cancel),
                                  _CompletionShape(self.model_id))

    async def _answer(self, request: Request, req: openai_api.Request, run, shape):
        events = self._events(request, run)
        try:
            # The first event is awaited before any response is begun: a prompt over the
            # context is found then, and still gets its own status code.
            first = await anext(events)
        except StopAsyncIteration:  # the client is gone
            return Response(status_code=499)
        except RoostError as e:
            raise _api_error(e) from None
        if req.stream:
            return StreamingResponse(self._sse(first, events, shape, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        done = first
        try:
            async for done in events:
                pass
        except RoostError as e:
            raise _api_error(e) from None
        return JSONResponse(shape.whole(done))

    async def _sse(self, first: Event, events: AsyncIterator[Event], shape, include_usage: bool):
        event = first
        # The prompt's length goes first, so a roost client can fill its context bar at once.
        prompt_tokens = first.prompt_tokens if isinstance(first, Token) else first.stats.prompt_tokens
        yield openai_api.sse({**shape.opening(), "roost": {"prompt_tokens": prompt_tokens}})
        while True:
            if isinstance(event, Done):
                yield openai_api.sse(shape.closing(event.stats))
                if include_usage:
                    yield openai_api.sse(shape.usage(event.stats))
                yield openai_api.sse("[DONE]")
                return
            yield openai_api.sse(shape.piece(event.text))
            try:
                event = await anext(events)
            except RoostError as e:  # after the status line: OpenAI's way is an error event
                self.counters.failed += 1
                yield openai_api.sse(_api_error(e).body())
                return


def _api_error(error: RoostError) -> ApiError:
    """An engine's error as the OpenAI API says it."""
    if isinstance(error, ContextOverflow):
        return ApiError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, (TemplateError, UsageError)):
        return ApiError(400, str(error))
    if isinstance(error, EngineCrashed):
        return ApiError(500, f"{error}; the server is loading the model again: retry shortly", type="server_error",
                        code="engine_crashed")
    return ApiError(500, str(error), type="server_error")


async def _cancel_on_disconnect(request: Request, cancel: Cancel) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


class _ChatShape:
    """/v1/chat/completions: a message, or chunks of deltas."""

    def __init__(self, model_id: str):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}

    def _chunk(self, choices: list, **extra) -> dict:
        return {**self.head, "object": "chat.completion.chunk", "choices": choices, **extra}

    def opening(self) -> dict:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def piece(self, text: str) -> dict:
        return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def closing(self, stats) -> dict:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": openai_api.finish_reason(stats)}],
                           **openai_api.finished(stats))

    def usage(self, stats) -> dict:
        return self._chunk([], usage=openai_api.usage(stats))

    def whole(self, done: Done) -> dict:
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "finish_reason": openai_api.finish_reason(done.stats)}],
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}


class _CompletionShape:
    """/v1/completions: text, or chunks of text."""

    def __init__(self, model_id: str):
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": model_id}

    def _choice(self, text: str, finish: str | None) -> list:
        return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]

    def opening(self) -> dict:
        return {**self.head, "choices": self._choice("", None)}

    def piece(self, text: str) -> dict:
        return {**self.head, "choices": self._choice(text, None)}

    def closing(self, stats) -> dict:
        return {**self.head, "choices": self._choice("", openai_api.finish_reason(stats)), **openai_api.finished(stats)}

    def usage(self, stats) -> dict:
        return {**self.head, "choices": [], "usage": openai_api.usage(stats)}

    def whole(self, done: Done) -> dict:
        return {**self.head, "choices": self._choice(done.text, openai_api.finish_reason(done.stats)),
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "is in use (another server?)" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
        raise UsageError(f"port {port} on {host} {why}; choose another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run(server: Server, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve until Ctrl-C or SIGTERM; answers still running are cancelled first, so the
    server stops within a token rather than after the longest answer."""
    import uvicorn

    class _Uvicorn(uvicorn.Server):
        async def shutdown(self, sockets=None):
            server.stop_all()
            await super().shutdown(sockets)

    config = uvicorn.Config(server.app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off")
    _Uvicorn(config).run(sockets=[sock])
