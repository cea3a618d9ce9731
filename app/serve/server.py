"""`roost serve`: one resident engine behind an OpenAI-compatible HTTP API.

Starlette routes and uvicorn serves. This module holds the routes, the API key check and
the errors as OpenAI's shape, the listening socket, and uvicorn's run. The engine behind
them (one generation at a time, a new process when it dies) is engine_slot.py; the bodies
of the answers are answer_shapes.py.

The engine runs in a process of its own (backends/child.py). When that process dies, the
answers in flight get 500 `engine_crashed`, the engine is loaded again in a new process,
requests meanwhile get 503 with Retry-After (and /health says "loading"), then it serves
again.
"""

from __future__ import annotations

import errno
import hmac
import logging
import socket
import time
from typing import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from roost import __version__
from roost.serve import openai_api
from roost.backends.base import Done, Engine, Event, Token
from roost.errors import EngineCrashed, RoostError, UsageError
from roost.serve.answer_shapes import ChatShape, CompletionShape, api_error
from roost.serve.engine_slot import DEFAULT_QUEUE, EngineSlot
from roost.serve.openai_api import ApiError

MAX_BODY = 32 * 2**20  # far beyond any context; a guard against memory, not a limit on prompts
log = logging.getLogger("roost.serve")


class Server:
    """The routes, over one engine."""

    def __init__(self, engine: Engine, model_id: str, *, api_key: str | None = None, queue: int = DEFAULT_QUEUE,
                 think: str | None = None, think_budget: int | None = None):
        """think, think_budget: for a reasoning model, what a request that does not say gets."""
        self.model_id, self.api_key = model_id, api_key
        self.think, self.think_budget = think, think_budget
        self.slot = EngineSlot(engine, queue)
        self.limit = max(self.slot.info.n_ctx, self.slot.info.n_ctx_train or 0)
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
        self.slot.stop_all()

    # -- plumbing -----------------------------------------------------------------------

    def _guarded(self, handler):
        async def guarded(request: Request):
            try:
                self._check_key(request)
                return await handler(request)
            except ApiError as e:
                if e.status == 503:
                    self.slot.counters.refused += 1
                elif e.status >= 500:
                    self.slot.counters.failed += 1
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
        self.slot.counters.failed += 1
        return JSONResponse(ApiError(500, f"the server failed: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    async def _body(self, request: Request) -> dict:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY // 2**20} MiB")
        return openai_api.parse_body(bytes(raw))

    # -- routes ---------------------------------------------------------------------------

    async def health(self, request: Request):
        """"ok"; or "loading" (the model, again after a crash) or "crashed" (and that
        failed), both 503 with Retry-After, as load balancers expect."""
        slot = self.slot
        body = {"status": slot.state, "model": self.model_id, "busy": slot.gate.busy, "waiting": slot.gate.waiting,
                "crashes": slot.counters.crashes}
        if slot.state == "ok":
            return JSONResponse(body)
        return JSONResponse({**body, "crash": slot.crash}, status_code=503, headers={"Retry-After": "1"})

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": int(self.slot.counters.started), "owned_by": "roost"}]})

    async def metrics(self, request: Request):
        slot, reading = self.slot, None
        if slot.state == "ok":
            try:
                reading = (await anyio.to_thread.run_sync(slot.engine.memory)).as_dict()
            except EngineCrashed as e:  # found dead between answers
                slot.crashed(e)
        c = slot.counters
        return JSONResponse({
            "roost": __version__,
            "model": self.model_id,
            "uptime_s": round(time.time() - c.started, 3),
            "state": slot.state,
            "crashes": c.crashes,
            "engine": slot.info.as_dict(),
            "memory": reading,
            "requests": {"running": int(slot.gate.busy), "waiting": slot.gate.waiting, "answered": c.answered,
                         "cancelled": c.cancelled, "refused": c.refused, "failed": c.failed},
            "last": c.last.as_dict() if c.last else None,
        })

    async def chat(self, request: Request):
        req = openai_api.chat_request(await self._body(request), self.model_id, self.limit, self.think,
                                      self.think_budget)
        return await self._answer(request, req,
                                  lambda cancel: self.slot.engine.stream(req.messages, req.params, cancel),
                                  ChatShape(self.model_id))

    async def completions(self, request: Request):
        req = openai_api.completion_request(await self._body(request), self.model_id, self.limit)
        return await self._answer(request, req,
                                  lambda cancel: self.slot.engine.complete(req.prompt, req.params, cancel),
                                  CompletionShape(self.model_id))

    async def _answer(self, request: Request, req: openai_api.Request, run, shape):
        events = self.slot.generate(request, run)
        try:
            # The first event is awaited before any response is begun: a prompt over the
            # context is found then, and still gets its own status code.
            first = await anext(events)
        except StopAsyncIteration:  # the client is gone
            return Response(status_code=499)
        except RoostError as e:
            raise api_error(e) from None
        if req.stream:
            return StreamingResponse(self._sse(first, events, shape, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        done = first
        try:
            async for done in events:
                pass
        except RoostError as e:
            raise api_error(e) from None
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
            yield openai_api.sse(shape.piece(event.text, event.kind))
            try:
                event = await anext(events)
            except RoostError as e:  # after the status line: OpenAI's way is an error event
                self.slot.counters.failed += 1
                yield openai_api.sse(api_error(e).body())
                return


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
