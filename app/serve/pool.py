"""The models behind `roost serve`: loaded when a request names them, each in an engine
process of its own, and kept while memory allows and while they are used.

A request's model (a catalog name, a file, a Hub repo, another app's model) is resolved
and loaded on a thread, so the models already loaded keep answering; requests for one
model that is loading wait on the same load. What may stay loaded together is the
planner's sum: the bytes planned for each model (GPU and host memory apart) within the
machine's budget as it was when the server started, or --max-memory. To make room, the
least recently used model that is not answering is unloaded; one answering is waited for.
An idle model is unloaded after its keep-alive (Ollama's: "5m", "0", "-1" for never).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import anyio

from roost import report
from roost.errors import ModelTooBig, RoostError, UsageError
from roost.serve.engine_slot import DEFAULT_QUEUE, EngineSlot
from roost.serve.openai_api import ApiError

if TYPE_CHECKING:
    from roost.backends.base import Engine
    from roost.models.loading import Prepared

DEFAULT_KEEP_ALIVE = 300.0  # an on-demand model idle this long is unloaded (Ollama's 5m)
REAP_EVERY_S = 0.25  # how often idle models are checked against their keep-alive
ROOM_WAIT_S = 60.0  # how long a load waits for answers on other models to end, to make room
ENGINE_NAMES = {"llama": "llama.cpp", "mlx": "mlx"}
log = logging.getLogger("roost.serve")

_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([KMGT]?)(i?)B?", re.IGNORECASE)


def parse_duration(value) -> float | None:
    """Seconds, from Ollama's keep_alive: "5m", "1h30m", "30s", a number of seconds; 0
    unloads right after the answer; a negative one keeps the model loaded (None)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d*)?\s*", value):
        seconds = float(value)
    elif isinstance(value, str) and (text := value.strip().lstrip("-")) and re.fullmatch(f"(?:{_DURATION.pattern})+",
                                                                                        text):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
        seconds = -seconds if value.strip().startswith("-") else seconds
    else:
        raise ValueError(f"{value!r} is not a duration: say 5m, 30s, 1h, 0 (unload at once) or -1 (keep loaded)")
    return None if seconds < 0 else seconds


def parse_size(text: str) -> int:
    """Bytes, from "300MB", "2GiB", "1.5G", "512000": decimal units, or binary with an i."""
    m = _SIZE.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size: say 300MB, 2GiB or 8G")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def said(seconds: float | None) -> str:
    return "forever" if seconds is None else f"{seconds:g} s"


@dataclass(frozen=True)
class Limits:
    """The memory the server's models may fill together, and how many may be loaded."""

    gpu_bytes: int  # 0: no GPU
    host_bytes: int
    models_max: int | None = None

    @classmethod
    def of(cls, budget, max_memory: int | None = None, models_max: int | None = None) -> "Limits":
        """From fit.budget on this machine, capped by --max-memory (each of VRAM and RAM)."""
        cap = max_memory or max(budget.gpu_bytes, budget.host_bytes)
        return cls(min(budget.gpu_bytes, cap), min(budget.host_bytes, cap), models_max)


class Model:
    """One model of the pool: loading (ready not done), or loaded (slot set)."""

    def __init__(self, model_id: str, keep_alive: float | None, prepared: Prepared | None = None):
        self.id = model_id
        self.keep_alive = keep_alive
        self.prepared = prepared
        self.slot: EngineSlot | None = None
        self.ready: asyncio.Future | None = None  # set while it loads on demand
        self.awaited = 0  # requests waiting for its load, to be answered as soon as it is done

    @property
    def path(self) -> str | None:
        return self.prepared.path if self.prepared else None

    @property
    def planned(self) -> tuple[int, int]:
        """(GPU, host) bytes the planner gave it; (0, 0) for an engine handed in unplanned."""
        if self.prepared is None:
            return 0, 0
        e = self.prepared.option.estimate
        return e.gpu, e.host

    @property
    def busy(self) -> bool:
        """Answering, with requests waiting their turn or for its load, or loading again
        after a crash: never unloaded then."""
        slot = self.slot
        return slot is not None and (self.awaited > 0 or slot.gate.busy or slot.gate.waiting > 0
                                     or slot.state == "loading")

    def idle_s(self) -> float:
        return 0.0 if self.busy or self.slot is None else time.monotonic() - self.slot.last_used

    def expires_in_s(self) -> float | None:
        if self.keep_alive is None or self.slot is None:
            return None
        return max(self.keep_alive - self.idle_s(), 0.0) if not self.busy else self.keep_alive

    def expired(self) -> bool:
        return self.slot is not None and not self.busy and self.keep_alive is not None and \
            self.idle_s() >= self.keep_alive


class PoolCounters:
    def __init__(self) -> None:
        self.loads = self.unloads = 0


class Pool:
    """The loaded models, keyed by id. resolve(name) finds a model on disk and plans it
    (loading.prepare, blocking; UsageError when it is not there, ModelTooBig); None: only
    the models added are served."""

    def __init__(self, resolve: Callable[[str], Prepared] | None = None, limits: Limits | None = None, *,
                 keep_alive: float | None = DEFAULT_KEEP_ALIVE, queue: int = DEFAULT_QUEUE):
        self.resolve, self.limits, self.keep_alive, self.queue = resolve, limits, keep_alive, queue
        self.counters = PoolCounters()
        self.default: str | None = None  # the preloaded model, which /health reports
        self._models: dict[str, Model] = {}
        self._aliases: dict[str, str] = {}  # other names of a model: a preloaded one's MODEL as given
        self._known: dict[str, Prepared] = {}  # each model loaded so far, as planned: to load it again as it was
        self._room: asyncio.Lock | None = None
        self._reaper: asyncio.Task | None = None

    def add(self, model_id: str, engine: Engine, prepared: Prepared | None = None, *,
            keep_alive: float | None = None, aliases: tuple[str, ...] = ()) -> None:
        """A model loaded before serving (roost serve MODEL): the default, kept unless
        keep_alive says otherwise."""
        model = Model(model_id, keep_alive, prepared)
        model.slot = EngineSlot(engine, self.queue)
        if prepared is not None:
            self._known[model_id] = prepared
        self._models[model_id] = model
        self._aliases.update({a: model_id for a in aliases if a != model_id})
        self.default = self.default or model_id
        self.counters.loads += 1

    def slots(self) -> Iterator[tuple[str, EngineSlot]]:
        """(model id, its EngineSlot) for each model loaded."""
        for model_id, model in list(self._models.items()):
            if model.slot is not None:
                yield model_id, model.slot

    def models(self) -> list[Model]:
        """Every model, loaded or loading."""
        return list(self._models.values())

    def loaded(self, name: str) -> Model | None:
        model = self._models.get(self._aliases.get(name, name))
        return model if model is not None and model.slot is not None else None

    def start(self) -> None:
        """Begin unloading idle models (once the event loop runs)."""
        if self._reaper is None:
            self._room = asyncio.Lock()
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def stop_all(self) -> None:
        """Cancel every running answer: the server is going down."""
        for _, slot in self.slots():
            slot.stop_all()

    def close(self) -> None:
        """Close every engine, giving its memory back (after the server has stopped)."""
        for model in list(self._models.values()):
            if model.slot is not None:
                model.slot.engine.close()
        self._models.clear()

    # -- getting a model ------------------------------------------------------------------

    async def get(self, name: str | None) -> Model:
        """The model a request names, loaded (waiting for its load, or starting it)."""
        self.start()
        if not isinstance(name, str) or not name:  # as OpenAI's API: every request names its model
            have = f"this server runs {self.default!r}" if self.default else "this server loads the one named"
            raise ApiError(400, f"'model' is required; {have}", param="model")
        while True:
            key = self._aliases.get(name, name)
            model = self._models.get(key)
            if model is None:
                if self.resolve is None:
                    have = ", ".join(repr(m) for m in self._models) or "none"
                    raise ApiError(404, f"the model {name!r} does not exist here; this server runs {have}",
                                   code="model_not_found", param="model")
                model = self._models[key] = Model(key, self.keep_alive, self._known.get(key))
                model.ready = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().create_task(self._load(model))
            if model.slot is None:
                loading = model
                loading.awaited += 1
                try:  # shielded: a client that leaves does not stop the load others wait on
                    model = await asyncio.shield(loading.ready)
                finally:
                    loading.awaited -= 1
            # Unloaded in the meantime only if it was another name's, found loaded: again.
            if self._models.get(model.id) is model:
                model.slot.last_used = time.monotonic()
                return model

    async def _load(self, model: Model) -> None:
        try:
            if model.prepared is None:
                model.prepared = self._known[model.id] = await anyio.to_thread.run_sync(self.resolve, model.id)
            same = next((m for m in self._models.values() if m is not model and m.path
                         and os.path.realpath(m.path) == os.path.realpath(model.path)), None)
            if same is not None:  # another name for a model loaded or loading: that one
                del self._models[model.id]
                self._aliases[model.id] = same.id
                model.ready.set_result(same if same.slot else await asyncio.shield(same.ready))
                return
            async with self._room:
                await self._make_room(model)
            log.warning("loading %s for a request (%s)", model.id, model.path)
            prepared = model.prepared
            engine = await anyio.to_thread.run_sync(_load_engine, prepared)
            model.slot = EngineSlot(engine, self.queue)
            self.counters.loads += 1
            log.warning("loaded %s (%s on %s); keep-alive %s", model.id, model.slot.info.engine,
                        model.slot.info.device, said(model.keep_alive))
            model.ready.set_result(model)
        except BaseException as e:
            self._models.pop(model.id, None)
            model.ready.set_exception(_refusal(model.id, e))
            model.ready.exception()  # seen here: a load no request waits on any longer is not an error
            if not isinstance(e, Exception):
                raise

    async def _make_room(self, model: Model) -> None:
        """Unload the least recently used idle models until this one fits beside the
        rest; wait for answering ones to end (ROOM_WAIT_S, then 503)."""
        if self.limits is None:
            return
        if (why := self.too_big(model.id, model.prepared)) is not None:
            raise ApiError(400, why, code="model_too_big", param="model")
        deadline = time.monotonic() + ROOM_WAIT_S
        while not self._fits(model):
            idle = [m for m in self._models.values() if m is not model and m.slot is not None and not m.busy]
            if idle:
                victim = min(idle, key=lambda m: m.slot.last_used)
                await self._unload(victim, f"to make room for {model.id}")
            elif time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the others are answering: wait for one to end
            else:
                raise ApiError(503, f"no room to load {model.id}: the models loaded are all answering; "
                                    "try again shortly", type="server_error", code="server_busy")

    def too_big(self, model_id: str, prepared: Prepared) -> str | None:
        """Why a model cannot be loaded here even alone, in a line; None if it can."""
        e, limits = prepared.option.estimate, self.limits
        if limits is None or e.gpu <= limits.gpu_bytes and e.host <= limits.host_bytes:
            return None
        needs = " and ".join(f"{report.size(n)} of {kind} (this server may use {report.size(limit)})"
                             for n, limit, kind in ((e.gpu, limits.gpu_bytes, "GPU memory"),
                                                    (e.host, limits.host_bytes, "RAM")) if n)
        return (f"{model_id} does not fit: it needs {needs}; a smaller quant, a smaller --ctx or a larger "
                "--max-memory would fit")

    def _fits(self, model: Model) -> bool:
        others = [m for m in self._models.values() if m is not model]
        gpu, host = model.planned
        limits = self.limits
        return (sum(m.planned[0] for m in others) + gpu <= limits.gpu_bytes
                and sum(m.planned[1] for m in others) + host <= limits.host_bytes
                and (limits.models_max is None or len(others) < limits.models_max))

    # -- unloading --------------------------------------------------------------------------

    async def unload(self, name: str) -> Model:
        """Unload a model by name (/api/stop); ApiError 404 if it is not loaded."""
        model = self.loaded(name)
        if model is None:
            raise ApiError(404, f"the model {name!r} is not loaded", code="model_not_found", param="model")
        await self._unload(model, "as asked")
        return model

    async def _unload(self, model: Model, why: str) -> None:
        """Its answers are cancelled, and its engine closed: the process ends, its memory
        given back."""
        if self._models.get(model.id) is not model:
            return
        del self._models[model.id]
        if self.default == model.id:
            self.default = None
        model.slot.stop_all()
        await anyio.to_thread.run_sync(model.slot.engine.close)
        self.counters.unloads += 1
        log.warning("unloaded %s %s", model.id, why)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            for model in list(self._models.values()):
                if model.expired():
                    try:
                        await self._unload(model, f"after {said(model.keep_alive)} idle (keep-alive)")
                    except Exception:  # closing a dead engine: it is gone either way
                        log.exception("unloading %s failed", model.id)


def _load_engine(prepared: Prepared) -> Engine:
    from roost.backends import load

    return load(prepared.path, prepared.plan, engine=prepared.engine, isolated=True)


def _refusal(model_id: str, error: BaseException) -> BaseException:
    """Why a model could not be loaded, as the API says it."""
    from roost.models.catalog import CatalogError
    from roost.serve.answer_shapes import api_error

    if isinstance(error, ApiError) or not isinstance(error, Exception):
        return error
    if isinstance(error, ModelTooBig):
        return ApiError(400, str(error), code="model_too_big", param="model")
    if isinstance(error, (UsageError, CatalogError)):  # not on disk, or no such model: the resolver's own words
        return ApiError(404, f"the model {model_id!r} cannot be served: {error}", code="model_not_found",
                        param="model")
    if isinstance(error, RoostError):
        return api_error(error)
    log.error("loading %s failed", model_id, exc_info=error)
    return ApiError(500, f"loading {model_id} failed: {type(error).__name__}: {error}", type="server_error")
