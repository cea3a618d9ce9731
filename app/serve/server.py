"""`roost serve`: models behind an OpenAI-compatible HTTP API.

Starlette routes and uvicorn serves. This module holds the routes, the API key check and
the errors as OpenAI's shape, the listening socket, and uvicorn's run. The models behind
them, loaded when a request names one and unloaded when idle or to make room, are
pool.py's; each model's engine (one generation at a time, a new process when it dies) is
engine_slot.py; the bodies of the answers are answer_shapes.py.

The engine runs in a process of its own (backends/child.py). When that process dies, the
answers in flight get 500 `engine_crashed`, the engine is loaded again in a new process,
requests meanwhile get 503 with Retry-After (and /health says "loading"), then it serves
again.

A chat over the context is refused (400 context_length_exceeded), as OpenAI's is; with
`truncate` (roost serve --truncate) its oldest turns are left out instead, as the chat app
does (context_policy.py), and the X-Roost-Dropped-Turns header says how many.
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

from roost import __version__, context_policy
from roost.serve import openai_api
from roost.backends.base import Done, Engine, Event, Token, ToolCall
from roost.errors import EngineCrashed, RoostError, UsageError
from roost.serve.answer_shapes import ChatShape, CompletionShape, api_error
from roost.serve.engine_slot import DEFAULT_QUEUE, EngineSlot
from roost.serve.openai_api import ApiError
from roost.serve.pool import ENGINE_NAMES, Model, Pool, parse_duration

DROPPED_HEADER = "X-Roost-Dropped-Turns"  # with --truncate: the turns left out of the prompt
MAX_BODY = 32 * 2**20  # far beyond any context; a guard against memory, not a limit on prompts
log = logging.getLogger("roost.serve")


class Server:
    """The routes, over a pool of models."""

    def __init__(self, engine: Engine | None = None, model_id: str | None = None, *, pool: Pool | None = None,
                 api_key: str | None = None, queue: int = DEFAULT_QUEUE, think: str | None = None,
                 think_budget: int | None = None, truncate: bool = False):
        """engine, model_id: one model served alone (a pool of it); else pool, which
        loads models on demand. think, think_budget: for a reasoning model, what a request
        that does not say gets. truncate: a chat over the context leaves out its oldest
        turns rather than being refused."""
        self.api_key, self.truncate = api_key, truncate
        self.think, self.think_budget = think, think_budget
        self.pool = pool or Pool(queue=queue)
        if engine is not None:
            self.pool.add(model_id, engine)
        guarded = self._guarded
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", guarded(self.models)),
                Route("/v1/chat/completions", guarded(self.chat), methods=["POST"]),
                Route("/v1/completions", guarded(self.completions), methods=["POST"]),
                Route("/metrics", guarded(self.metrics)),
                Route("/api/ps", guarded(self.ps)),
                Route("/api/stop", guarded(self.stop), methods=["POST"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
        )

    @property
    def model_id(self) -> str | None:
        """The model a request that names none gets: the one preloaded, while loaded."""
        return self.pool.default

    @property
    def slot(self) -> EngineSlot | None:
        """The default model's engine, for what reports one model."""
        model = self.pool.loaded(self.pool.default) if self.pool.default else None
        return model.slot if model else None

    def stop_all(self) -> None:
        """Cancel every running answer: the server is going down."""
        self.pool.stop_all()

    # -- plumbing -----------------------------------------------------------------------

    def _guarded(self, handler):
        async def guarded(request: Request):
            try:
                self._check_key(request)
                return await handler(request)
            except ApiError as e:
                if (slot := self._slot_of(request)) is None:  # no model to count it against
                    pass
                elif e.status == 503:
                    slot.counters.refused += 1
                elif e.status >= 500:
                    slot.counters.failed += 1
                headers = {"Retry-After": "1"} if e.status == 503 else None
                return JSONResponse(e.body(), status_code=e.status, headers=headers)
        return guarded

    def _slot_of(self, request: Request) -> EngineSlot | None:
        """The engine a request was for, once known; else the default model's."""
        model = getattr(request.state, "model", None)
        return model.slot if model is not None else self.slot

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
        if (slot := self._slot_of(request)) is not None:
            slot.counters.failed += 1
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
        """The preloaded model's "ok"; or "loading" (again after a crash) or "crashed"
        (and that failed), both 503 with Retry-After, as load balancers expect. Without
        one, "ok": the server is up. "models": each model's own state."""
        models = {m.id: {"state": m.slot.state if m.slot else "loading", "busy": m.busy,
                         "waiting": m.slot.gate.waiting if m.slot else 0,
                         "crashes": m.slot.counters.crashes if m.slot else 0} for m in self.pool.models()}
        slot = self.slot
        if slot is None:
            return JSONResponse({"status": "ok", "model": None, "models": models})
        body = {"status": slot.state, "model": self.model_id, "busy": slot.gate.busy, "waiting": slot.gate.waiting,
                "crashes": slot.counters.crashes, "models": models}
        if slot.state == "ok":
            return JSONResponse(body)
        return JSONResponse({**body, "crash": slot.crash}, status_code=503, headers={"Retry-After": "1"})

    async def models(self, request: Request):
        """What can be served: the models loaded, then (when the server loads on demand)
        those on disk, as `roost ls` lists them. `roost.loaded` says which are loaded."""
        data = []
        for m in self.pool.models():
            info = m.slot.info if m.slot else None
            data.append({"id": m.id, "object": "model", "created": int(m.slot.counters.started if m.slot else time.time()),
                         "owned_by": "roost", "roost": {"loaded": m.slot is not None, "state": m.slot.state if m.slot
                                                        else "loading", "path": m.path,
                                                        "engine": info.engine if info else None,
                                                        "n_ctx": info.n_ctx if info else None}})
        if self.pool.resolve is not None:
            data += await anyio.to_thread.run_sync(_on_disk, {m.path for m in self.pool.models() if m.path})
        return JSONResponse({"object": "list", "data": data})

    async def ps(self, request: Request):
        """The models loaded (and loading): what `roost ps` shows."""
        return JSONResponse({"models": [await self._ps(m) for m in self.pool.models()]})

    async def _ps(self, model: Model) -> dict:
        slot = model.slot
        reading = await self._memory(slot) if slot is not None else None
        prepared = model.prepared
        expires = model.expires_in_s()
        return {"model": model.id, "path": model.path or (slot.info.model if slot else None),
                "engine": slot.info.engine if slot else ENGINE_NAMES.get(prepared.engine if prepared else "", None),
                "device": slot.info.device if slot else None,
                "n_ctx": slot.info.n_ctx if slot else prepared.plan.n_ctx if prepared else None,
                "memory": reading, "planned_bytes": sum(model.planned), "idle_s": round(model.idle_s(), 3),
                "expires_in_s": None if expires is None else round(expires, 3),
                "state": slot.state if slot else "loading", "busy": model.busy}

    async def stop(self, request: Request):
        """Unload a model now: {"model": ID}."""
        name = (await self._body(request)).get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required: the id of a loaded model (see /api/ps)", param="model")
        return JSONResponse({"stopped": (await self.pool.unload(name)).id})

    async def metrics(self, request: Request):
        """Prometheus's text format; JSON for ?format=json or Accept: application/json
        (roost's own clients), with the default model's numbers at the top as before."""
        import psutil

        from roost.machine import gpus
        from roost.serve import metrics as exposition

        models = [(model_id, slot, await self._memory(slot)) for model_id, slot in self.pool.slots()]
        gpu_readings = await anyio.to_thread.run_sync(gpus.read)
        uptime_s = round(time.time() - psutil.Process().create_time(), 3)
        if not exposition.wants_json(request.headers.get("accept", ""), request.query_params.get("format")):
            reading = exposition.Reading(__version__, uptime_s, self.pool.counters.loads, self.pool.counters.unloads,
                                         models, gpu_readings)
            return Response(exposition.prometheus_text(reading), media_type=exposition.CONTENT_TYPE)
        each = {model_id: exposition.model_json(slot, memory) for model_id, slot, memory in models}
        default = each.get(self.model_id) or dict.fromkeys(("state", "crashes", "engine", "memory", "requests",
                                                            "tokens", "last"))
        return JSONResponse({"roost": __version__, "model": self.model_id, "uptime_s": uptime_s, **default,
                             "models": each, "loads": self.pool.counters.loads,
                             "unloads": self.pool.counters.unloads, "gpu": [g.as_dict() for g in gpu_readings]})

    async def _memory(self, slot: EngineSlot) -> dict | None:
        """The engine's memory now, as a dict; None while it is not running."""
        if slot.state != "ok":
            return None
        try:
            return (await anyio.to_thread.run_sync(slot.engine.memory)).as_dict()
        except EngineCrashed as e:  # found dead between answers
            slot.crashed(e)
            return None

    async def _model(self, request: Request, body: dict) -> tuple[Model, int]:
        """The model a request names, loaded, and the most tokens it holds. Ollama's
        keep_alive, if given, becomes the model's."""
        keep_alive = None
        if "keep_alive" in body:
            try:
                keep_alive = parse_duration(body["keep_alive"])
            except ValueError as e:
                raise ApiError(400, f"keep_alive: {e}", param="keep_alive") from None
        model = await self.pool.get(body.get("model"))
        if "keep_alive" in body:
            model.keep_alive = keep_alive
        request.state.model = model
        info = model.slot.info
        return model, max(info.n_ctx, info.n_ctx_train or 0)

    async def chat(self, request: Request):
        body = await self._body(request)
        model, limit = await self._model(request, body)
        req = openai_api.chat_request(body, body["model"], limit, self.think, self.think_budget)
        headers: dict[str, str] = {}
        engine = model.slot.engine

        def run(cancel):
            messages = req.messages
            if self.truncate:  # on the engine's thread, in the request's turn: it renders prompts
                first = context_policy.fit(engine, messages, req.params)
                headers[DROPPED_HEADER] = str(context_policy.dropped(messages, first))
                messages = context_policy.seen(messages, first)
            return engine.stream(messages, req.params, cancel)

        return await self._answer(request, model.slot, req, run,
                                  ChatShape(model.id, req.params.logprobs is not None), headers)

    async def completions(self, request: Request):
        body = await self._body(request)
        model, limit = await self._model(request, body)
        req = openai_api.completion_request(body, body["model"], limit)
        engine = model.slot.engine
        return await self._answer(request, model.slot, req,
                                  lambda cancel: engine.complete(req.prompt, req.params, cancel),
                                  CompletionShape(model.id, req.params.logprobs is not None, req.prompt))

    async def _answer(self, request: Request, slot: EngineSlot, req: openai_api.Request, run, shape,
                      headers: dict[str, str] | None = None):
        """headers: more of the response's, known once run has begun (by its first event)."""
        events = slot.generate(request, run)
        try:
            # The first event is awaited before any response is begun: a prompt over the
            # context is found then, and still gets its own status code.
            first = await anext(events)
        except StopAsyncIteration:  # the client is gone
            return Response(status_code=499)
        except RoostError as e:
            raise api_error(e) from None
        if req.stream:
            return StreamingResponse(self._sse(slot, first, events, shape, req.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              **(headers or {})})
        done = first
        try:
            async for done in events:
                pass
        except RoostError as e:
            raise api_error(e) from None
        return JSONResponse(shape.whole(done), headers=headers)

    async def _sse(self, slot: EngineSlot, first: Event, events: AsyncIterator[Event], shape, include_usage: bool):
        event = first
        # The prompt's length goes first, so a roost client can fill its context bar at once
        # (unknown before a tool call that comes before any text).
        prompt_tokens = (first.prompt_tokens if isinstance(first, Token) else
                         first.stats.prompt_tokens if isinstance(first, Done) else None)
        yield openai_api.sse({**shape.opening(), **({"roost": {"prompt_tokens": prompt_tokens}}
                                                     if prompt_tokens is not None else {})})
        while True:
            if isinstance(event, Done):
                yield openai_api.sse(shape.closing(event.stats))
                if include_usage:
                    yield openai_api.sse(shape.usage(event.stats))
                yield openai_api.sse("[DONE]")
                return
            if isinstance(event, ToolCall):
                yield openai_api.sse(shape.tool_call(event))
            else:
                yield openai_api.sse(shape.piece(event.text, event.kind, event.logprobs))
            try:
                event = await anext(events)
            except RoostError as e:  # after the status line: OpenAI's way is an error event
                slot.counters.failed += 1
                yield openai_api.sse(api_error(e).body())
                return


def _on_disk(loaded: set[str]) -> list[dict]:
    """The models on disk that a request may name, as /v1/models lists them: the bundled
    catalog models, then what `roost ls` lists (each by a name that finds it again), less
    those loaded."""
    import os

    from roost.models import catalog, library

    seen = {os.path.realpath(p) for p in loaded}
    found = [(name, catalog.bundled_path(m.bundled, name)) for name, m in catalog.models().items() if m.bundled]
    for d in library.on_disk():
        name = d.name if d.source != "huggingface" else f"{d.name}:{d.quant}" if d.name else f"{d.repo_id}:{d.filename}"
        found.append((name, d.path))
    out = []
    for name, path in found:
        if os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        out.append({"id": name, "object": "model", "created": int(os.path.getmtime(path)), "owned_by": "roost",
                    "roost": {"loaded": False, "path": path}})
    return out


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
        async def startup(self, sockets=None):
            await super().startup(sockets)
            server.pool.start()  # idle models are unloaded from now, requests or not

        async def shutdown(self, sockets=None):
            server.stop_all()
            await super().shutdown(sockets)

    config = uvicorn.Config(server.app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off")
    _Uvicorn(config).run(sockets=[sock])
