"""The OpenAI API's shapes, in and out: requests checked into roost's Params, and
roost's events and stats written as OpenAI's responses and stream chunks.

Beyond OpenAI's fields, every finished answer carries `timings` (llama-server's names,
which other clients already read) and `roost` (every Stats field), so a client sees the
engine's own prefill and decode speeds rather than ones distorted by the network.

A reasoning model's thought goes as `reasoning_content`, beside `content` (the answer
alone), as llama-server and DeepSeek's API send it and Open WebUI and LibreChat read it;
the thinking controls are the fields llama-server takes: `reasoning_effort`,
`chat_template_kwargs` and `thinking_budget_tokens`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from roost import sampling
from roost.backends.base import Message, Params, Stats
from roost.backends.reasoning import EFFORTS

ROLES = {"system", "user", "assistant", "developer"}
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}
MAX_STOPS = 16
# OpenAI's reasoning_effort, as --think says it: "none" switches thinking off (as with
# llama-server), "minimal" is the least roost has. An effort reaches the chat template as
# its `reasoning_effort` variable, as llama-server gives it: a template with effort levels
# (gpt-oss) reads it, one without (Qwen3) thinks as it would have.
EFFORT_OF = {"none": None, "minimal": "low", **{e: e for e in EFFORTS}}


class ApiError(Exception):
    """A request the server answers with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Request:
    """One checked request: the chat's messages or a raw prompt, and how to answer."""

    messages: list[Message] | None
    prompt: str | None
    params: Params
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def chat_request(body: dict, model_id: str, limit: int, think: str | None = None,
                 think_budget: int | None = None) -> Request:
    """limit: the most tokens the model can hold (what it was trained on, or the context).
    think, think_budget: the server's own (roost serve --think, --think-budget), for a
    request that does not say."""
    _check_model(body, model_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required: a non-empty list of {role, content}", param="messages")
    params = replace(_params(body, limit), **_thinking(body, think, think_budget))
    return Request([_message(m, i) for i, m in enumerate(messages)], None, params, *_streaming(body))


def completion_request(body: dict, model_id: str, limit: int) -> Request:
    _check_model(body, model_id)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' is required: a string (one prompt per request)", param="prompt")
    if body.get("echo") or body.get("suffix"):
        raise ApiError(400, "'echo' and 'suffix' are not supported", param="echo" if body.get("echo") else "suffix")
    return Request(None, prompt, _params(body, limit), *_streaming(body))


def _check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"'model' is required; this server runs {model_id!r}", param="model")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist here; this server runs {model_id!r}",
                       code="model_not_found", param="model")


def _message(m, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ApiError(400, f"{where} needs a role: one of {', '.join(sorted(ROLES))}", param=where)
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only, images need a model that reads them
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"{where}.content: only text parts are supported", param=f"{where}.content")
        content = "".join(p["text"] for p in content)
    if content is None and m["role"] == "assistant":
        content = ""
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string", param=f"{where}.content")
    return {"role": "system" if m["role"] == "developer" else m["role"], "content": content}


def _params(body: dict, limit: int) -> Params:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        max_tokens = _number(body, "max_tokens" if "max_tokens" in body else "max_completion_tokens", int, 1, None)
        # More than the context holds just ends at its end (finish_reason "length"), as
        # with llama-server; more than the model could ever hold is a mistake worth saying.
        if max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}, more than this model can ever hold "
                                f"({limit} tokens of context)", param="max_tokens")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported: one engine answers one choice at a time", param="n")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not (isinstance(stop, (list, tuple)) and len(stop) <= MAX_STOPS and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    seed = body.get("seed")
    if seed is not None:
        seed = _number(body, "seed", int, 0, 2**32 - 1)
    # temperature and top_p are OpenAI's; top_k, min_p and repeat_penalty llama-server's
    # extensions; all within the bounds roost run and the chat app take (roost.sampling).
    return Params(max_tokens=max_tokens, seed=seed, stop=tuple(stop),
                  **{s.name: _number(body, s.name, s.kind, s.low, s.high, s.default) for s in sampling.SETTINGS})


def _thinking(body: dict, think: str | None, budget: int | None) -> dict:
    """The request's thinking controls as Params fields; where it says nothing, the server's.
    Every chat_template_kwargs variable reaches the template, as with llama-server; its
    enable_thinking is also --think on or off, which works on templates without it too (an
    R1 distill's thought is closed as soon as it opens)."""
    variables = body.get("chat_template_kwargs")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise ApiError(400, "chat_template_kwargs must be an object of template variables, "
                            'e.g. {"enable_thinking": false}', param="chat_template_kwargs")
    enable, effort = variables.get("enable_thinking"), body.get("reasoning_effort")
    if enable is not None and not isinstance(enable, bool):
        raise ApiError(400, f"chat_template_kwargs.enable_thinking must be true or false, not {enable!r}",
                       param="chat_template_kwargs")
    if effort is not None and (not isinstance(effort, str) or effort not in EFFORT_OF):
        raise ApiError(400, f"reasoning_effort must be one of {', '.join(EFFORT_OF)}, not {effort!r}",
                       param="reasoning_effort")
    if enable is not None and effort is not None and enable != (effort != "none"):
        raise ApiError(400, f"reasoning_effort {effort!r} and chat_template_kwargs.enable_thinking "
                            f"{str(enable).lower()} disagree: send one of them", param="reasoning_effort")
    if effort == "none" or enable is False:
        think = "off"
    elif effort is not None:
        think = None  # the effort goes as the template's variable, which --think's own would override
        variables = {**variables, "reasoning_effort": EFFORT_OF[effort]}
    elif enable:
        think = "on"
    if body.get("thinking_budget_tokens") is not None:
        budget = _number(body, "thinking_budget_tokens", int, 0, None)
    return {"think": think, "think_budget": budget, "template_vars": tuple(variables.items())}


def _number(body: dict, name: str, kind: type, low, high, default=None):
    value = body.get(name)
    if value is None:
        return default
    # Python's json reads NaN and Infinity, which compare false with every bound: refused here.
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (kind is float or float(value).is_integer()))
    if not ok or value < low or (high is not None and value > high):
        within = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"{name} must be {'a whole number' if kind is int else 'a number'} {within}, not {value!r}",
                       param=name)
    return kind(value)


def _streaming(body: dict) -> tuple[bool, bool]:
    options = body.get("stream_options") or {}
    return bool(body.get("stream")), isinstance(options, dict) and bool(options.get("include_usage"))


# -- out ----------------------------------------------------------------------------------


def usage(stats: Stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.context_tokens, "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": stats.reasoning_tokens}}


def timings(stats: Stats) -> dict:
    return {"prompt_n": stats.prefilled_tokens, "prompt_ms": round(stats.prefill_s * 1000, 3),
            "prompt_per_second": round(stats.prefill_tps, 2), "predicted_n": stats.generated_tokens,
            "predicted_ms": round(stats.decode_s * 1000, 3), "predicted_per_second": round(stats.decode_tps, 2),
            "cache_n": stats.cached_tokens}


def finished(stats: Stats) -> dict:
    """What every finished answer carries beyond OpenAI's fields."""
    return {"timings": timings(stats), "roost": stats.as_dict()}


def finish_reason(stats: Stats) -> str:
    return FINISH[stats.stop_reason]


def sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
