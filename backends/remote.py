"""An Engine over any OpenAI-compatible server: `roost serve` on another box,
llama-server, vLLM, Ollama.

The server's own numbers are used where it gives them: a roost server sends every
Stats field and its memory readings, llama-server its `timings`. Elsewhere prefill and
decode are timed here, at the chunk, and so include the network. Time to first token, and
to the answer's first, is always the one seen here: it is what the person waiting sees.

A reasoning model's thought comes as `reasoning_content` (llama-server, DeepSeek, roost)
or `reasoning` (vLLM, OpenRouter) beside the answer's `content`: the server has told them
apart, and the stream says which each piece is, as a local engine's does.
"""

from __future__ import annotations

import json
import socket
from dataclasses import fields, replace
from typing import Callable, Iterator, Sequence
from urllib.parse import urlsplit

import httpx2

from roost.backends.base import (ANSWER, REASONING, Cancel, Done, EngineInfo, Event, MemoryReading, Message,
                                 Params, Stats)
from roost.backends.streaming import Clock, Texts
from roost.errors import ConnectionLost, ContextOverflow, RemoteError, UsageError
from roost.machine.gpus import GpuReading

CONNECT_S = 10.0
READING_S = 3.0  # for the readings a status bar asks for every second: never long


class RemoteEngine:
    name = "remote"

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--remote {url!r} is not a server address; give one like http://127.0.0.1:8080")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/').removesuffix('/v1')}"
        self.host = parts.netloc
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No read timeout on answers: a long prompt on a slow box may prefill for minutes.
        self._client = httpx2.Client(base_url=self.url, headers=headers,
                                     timeout=httpx2.Timeout(CONNECT_S, connect=CONNECT_S, read=None))
        listed = [m for m in self._get_json("/v1/models").get("data", []) if isinstance(m, dict)]
        served = [m.get("id") for m in listed]
        if model is None:
            # A roost server also lists what it could load: the one it has loaded is meant.
            loaded = [m.get("id") for m in listed if (m.get("roost") or {}).get("loaded")]
            served = loaded if len(loaded) == 1 else served
            if len(served) != 1:
                raise UsageError(f"{self.url} serves {len(served)} models ({', '.join(served) or 'none'}): name one")
            model = served[0]
        elif model not in served:
            raise UsageError(f"{self.url} has no model {model!r}; it serves: {', '.join(served) or 'none'}")
        self.model = model
        self._roost = self._roost_metrics()  # None: not a roost server
        self.gpus: list[GpuReading] = []  # the server's GPUs, as its last memory reading said

    # -- HTTP ---------------------------------------------------------------------------

    def _get_json(self, path: str, timeout: float | None = None) -> dict:
        try:
            response = self._client.get(path, timeout=timeout or CONNECT_S)
        except httpx2.HTTPError as e:
            raise RemoteError(f"cannot reach {self.url} ({_reason(e)}); is `roost serve` running there, "
                              "and the SSH tunnel up if there is one?") from None
        if response.status_code >= 400:
            raise _refusal(response.status_code, response.content, self.url)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise RemoteError(f"{self.url}{path} did not answer with JSON: not an OpenAI-compatible server")
        return data

    def _roost_metrics(self) -> dict | None:
        """A roost server's JSON metrics, this model's own over the server's default's;
        None from another server, or while the model is not loaded (no engine to report)."""
        try:
            data = self._get_json("/metrics?format=json", READING_S)
        except (RemoteError, UsageError):
            return None
        if "roost" not in data:
            return None
        data = {**data, **((data.get("models") or {}).get(self.model) or {})}
        return data if data.get("engine") else None

    # -- generation ---------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        body = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], **_thinking(params)}
        return self._generate("/v1/chat/completions", body, params, cancel, _delta_pieces)

    def complete(self, prompt: str, params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        return self._generate("/v1/completions", {"prompt": prompt}, params, cancel,
                              lambda choice: [(ANSWER, choice.get("text") or "")])

    def _sampling(self, params: Params) -> dict:
        body = {"temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self._roost:  # extensions other servers may refuse
            body.update(top_k=params.top_k, min_p=params.min_p, repeat_penalty=params.repeat_penalty)
        if params.schema is not None:  # OpenAI's structured output, which llama-server, Ollama and LM Studio take too
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": json.loads(params.schema), "strict": True}}
        return body

    def _generate(self, path: str, body: dict, params: Params, cancel: Cancel | None,
                  pieces_of: Callable[[dict], list[tuple[str, str]]]) -> Iterator[Event]:
        cancel = cancel or Cancel()
        body = {"model": self.model, **body, **self._sampling(params), "stream": True,
                "stream_options": {"include_usage": True}}
        clock = Clock()
        texts = Texts()
        pieces = thought_pieces = 0
        prompt_tokens = 0
        end: dict = {}  # what the last chunks say: finish_reason, usage, timings, roost
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    raise _refusal(response.status_code, response.read(), self.url)
                take_back = cancel.on_set(lambda: _hang_up(response))
                try:
                    for sse in httpx2.EventSource(response):
                        if cancel.is_set():
                            break
                        if sse.data.strip() == "[DONE]":
                            break
                        chunk = json.loads(sse.data)
                        if "error" in chunk:
                            raise RemoteError(f"{self.url} failed while answering: {_message(chunk)}")
                        prompt_tokens = (chunk.get("roost") or {}).get("prompt_tokens", prompt_tokens)
                        for key in ("usage", "timings", "roost"):
                            if chunk.get(key):
                                end[key] = chunk[key]
                        for choice in chunk.get("choices") or []:
                            end["finish_reason"] = choice.get("finish_reason") or end.get("finish_reason")
                            for kind, piece in pieces_of(choice):
                                if piece:
                                    clock.token()
                                    pieces += 1
                                    thought_pieces += kind == REASONING
                                    texts.add(kind, piece)
                                    yield clock.stamp(piece, pieces, prompt_tokens, kind)
                finally:
                    take_back()
        except (httpx2.HTTPError, ValueError) as e:
            if not cancel.is_set():
                partial = Done(texts.answer, self._stats(end, clock, {"pieces": pieces, "thought": thought_pieces},
                                                         prompt_tokens, True), texts.reasoning)
                raise ConnectionLost(f"the connection to {self.host} broke mid-answer ({_reason(e)})",
                                     partial) from None
        # A chunk is a token near enough, where the server does not count them itself.
        counted = {"pieces": pieces, "thought": thought_pieces}
        yield Done(texts.answer, self._stats(end, clock, counted, prompt_tokens, cancel.is_set()), texts.reasoning)

    def _stats(self, end: dict, clock: Clock, counted: dict, prompt_tokens: int, cancelled: bool) -> Stats:
        seen = clock.durations()  # here, at the chunk: the network included
        ttft = seen["ttft_s"]
        answered = seen["answer_ttft_s"]
        if cancelled:
            return Stats(prompt_tokens, 0, counted["pieces"], ttft, seen["decode_s"], ttft, "cancelled",
                         self._n_ctx(), None, reasoning_tokens=counted["thought"], answer_ttft_s=answered)
        if "roost" in end and "stop_reason" in end["roost"]:
            server = Stats.from_dict(end["roost"])
            ttft = max(ttft, server.prefill_s)
            return replace(server, ttft_s=ttft, answer_ttft_s=None if answered is None else max(answered, ttft))
        usage = end.get("usage") or {}
        timing = end.get("timings") or {}
        cached = timing.get("cache_n", (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        thought = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        return Stats(
            prompt_tokens=usage.get("prompt_tokens", timing.get("prompt_n", 0) + cached),
            cached_tokens=cached,
            generated_tokens=usage.get("completion_tokens", timing.get("predicted_n", counted["pieces"])),
            prefill_s=timing["prompt_ms"] / 1000 if "prompt_ms" in timing else ttft,
            decode_s=timing["predicted_ms"] / 1000 if "predicted_ms" in timing else seen["decode_s"],
            ttft_s=ttft,
            stop_reason="length" if end.get("finish_reason") == "length" else "stop",
            n_ctx=self._n_ctx(),
            peak_rss_bytes=None,
            # A server that counts no thought (or says 0 while it sent one) is counted here.
            reasoning_tokens=thought or counted["thought"],
            answer_ttft_s=answered,
        )

    # -- readings -----------------------------------------------------------------------

    def _n_ctx(self) -> int:
        return self._roost["engine"]["n_ctx"] if self._roost else 0

    def memory(self) -> MemoryReading:
        """The server's memory, where it says (a roost server); not this process's."""
        unknown = MemoryReading(rss_bytes=None, peak_rss_bytes=None, host=self.host)
        if not self._roost:
            return unknown
        data = self._roost_metrics()
        self.gpus = [GpuReading.from_dict(g) for g in data.get("gpu") or []] if data else []
        reading = data.get("memory") if data else None
        if not reading:
            return unknown
        return MemoryReading(**{f.name: reading.get(f.name) for f in fields(MemoryReading) if f.name != "host"},
                             host=self.host)

    def info(self) -> EngineInfo:
        if not self._roost:
            return EngineInfo(engine=self.name, version="", device="remote", gpu_offload=False, model=self.model,
                              n_ctx=0, build=f"OpenAI-compatible server at {self.url}")
        server = self._roost["engine"]
        known = {f.name for f in fields(EngineInfo)}
        return EngineInfo(**{**{k: v for k, v in server.items() if k in known}, "engine": self.name,
                             "model": self.model, "build": f"roost {self._roost['roost']} serve at {self.url}: "
                             f"{server['engine']} {server['version']}; {server['build']}"})

    def close(self) -> None:
        self._client.close()


def _thinking(params: Params) -> dict:
    """--think and --think-budget as the fields llama-server takes (and roost serve, the
    same): an effort as OpenAI's reasoning_effort, on or off as the template variable
    Qwen3's and others' read, more template variables beside it, the budget as
    llama-server's thinking_budget_tokens. Nothing where nothing is asked: a server that
    does not know these fields never sees them."""
    body: dict = {}
    variables = dict(params.template_vars)
    if params.think in ("on", "off"):
        variables["enable_thinking"] = params.think == "on"
    elif params.think is not None:
        body["reasoning_effort"] = params.think
    if variables:
        body["chat_template_kwargs"] = variables
    if params.think_budget is not None:
        body["thinking_budget_tokens"] = params.think_budget
    return body


def _delta_pieces(choice: dict) -> list[tuple[str, str]]:
    """A chat chunk's thought and answer, in the order the model wrote them."""
    delta = choice.get("delta") or {}
    pieces = [(REASONING, delta.get("reasoning_content") or delta.get("reasoning")), (ANSWER, delta.get("content"))]
    return [(kind, text) for kind, text in pieces if isinstance(text, str)]


def _hang_up(response) -> None:
    """Shut the socket down under a read blocked in another thread: closing it would
    not wake that read, and the server learns of the cancel only from the hang-up."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _message(body: dict) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)


def _refusal(status: int, content: bytes, url: str) -> Exception:
    """A server's error answer as roost's error: the server's words, kept whole."""
    try:
        body = json.loads(content)
        error = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        body, error = None, None
    said = _message(body) if isinstance(body, dict) else content.decode("utf-8", "replace").strip()[:200]
    code = error.get("code") if isinstance(error, dict) else None
    if code == "context_length_exceeded":
        return ContextOverflow(said)
    if status in (401, 403):
        return UsageError(f"{url} refused the API key ({said}); give the server's key with --api-key or ROOST_API_KEY")
    if status == 404 and code != "model_not_found":
        return RemoteError(f"{url} does not speak the OpenAI API ({status}: {said})")
    if status < 500:
        return UsageError(f"{url} refused the request: {said}")
    return RemoteError(f"{url} failed ({status}): {said}")


def _reason(error: Exception) -> str:
    text = str(error).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text or type(error).__name__
