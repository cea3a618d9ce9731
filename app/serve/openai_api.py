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
import re
from dataclasses import dataclass, replace

from roost import sampling
from roost.backends.base import Message, Params, Stats
from roost.backends.grammar import to_gbnf
from roost.backends.reasoning import EFFORTS
from roost.errors import UsageError

ROLES = {"system", "user", "assistant", "developer", "tool"}
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # a function's name, as OpenAI allows it
TOOL_CHOICES = ("auto", "none", "required")
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}
MAX_STOPS = 16
# OpenAI's reasoning_effort, as --think says it: "none" switches thinking off (as with
# llama-server), "minimal" is the least roost has. An effort reaches the chat template as
# its `reasoning_effort` variable, as llama-server gives it: a template with effort levels
# (gpt-oss) reads it, one without (Qwen3) thinks as it would have.
EFFORT_OF = {"none": None, "minimal": "low", **{e: e for e in EFFORTS}}
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI's
MAX_COMPLETION_LOGPROBS = 5  # completions' logprobs, as OpenAI's legacy API

# No silent drops: the request fields, OpenAI's and llama-server's, that would change what
# an answer means and that roost does not honour, each with the values that ask for
# nothing more (what clients send by default) and why any other is refused: a 400 naming
# the field, never an answer to a question other than the one asked. Served elsewhere in
# this module: model, messages, prompt, max_tokens, max_completion_tokens, stop, seed,
# stream, stream_options, logprobs, top_logprobs, the sampling settings (roost.sampling),
# presence_penalty and frequency_penalty, the thinking controls, response_format and tools
# (tool_choice, parallel_tool_calls).
# Accepted and ignored, since they change nothing in the answer: user, metadata, store,
# service_tier, prompt_cache_key, safety_identifier, and llama-server's cache_prompt.
REFUSED: dict[str, tuple[tuple, str]] = {
    "n": ((None, 1), "only n=1 is supported: one engine answers one choice at a time"),
    "best_of": ((None, 1), "best_of above 1 is not supported: one answer is made per request"),
    "echo": ((None, False), "echo is not supported: the answer holds the completion alone"),
    "suffix": ((None, ""), "suffix is not supported: no fill-in-the-middle"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "functions": ((None, []), "functions (the legacy form of tools) is not supported: send them as tools"),
    "function_call": ((None,), "function_call (the legacy form of tool_choice) is not supported: use tool_choice"),
    "audio": ((None,), "audio output is not supported"),
    "modalities": ((None, ["text"]), "only text output is supported: modalities must be [\"text\"]"),
    "prediction": ((None,), "prediction (predicted outputs) is not supported"),
    "web_search_options": ((None,), "web_search_options: web search is not supported"),
    "verbosity": ((None, "medium"), "verbosity is not supported: the model answers as it would"),
    # llama-server's extensions
    "n_probs": ((None, 0), "n_probs is not supported here: use logprobs and top_logprobs"),
    "grammar": ((None, ""), "grammar (GBNF) is not supported: use response_format with a JSON schema"),
    "json_schema": ((None,), "json_schema is not supported here: use response_format"),
    "ignore_eos": ((None, False), "ignore_eos is not supported: the model ends its answer itself"),
    "mirostat": ((None, 0), "mirostat is not supported"),
    "typical_p": ((None, 1), "typical_p is not supported"),
    "dry_multiplier": ((None, 0), "DRY sampling (dry_multiplier) is not supported"),
    "xtc_probability": ((None, 0), "XTC sampling (xtc_probability) is not supported"),
}


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
    params = replace(_params(body, limit), **_thinking(body, think, think_budget), logprobs=_chat_logprobs(body),
                     **_tools(body), **_response_format(body))
    if params.schema is not None and params.tool_choice == "required":
        raise ApiError(400, "tool_choice requires a call, and response_format JSON: the answer can be only one of "
                            "them", param="tool_choice")
    return Request([_message(m, i) for i, m in enumerate(messages)], None, params, *_streaming(body))


def completion_request(body: dict, model_id: str, limit: int) -> Request:
    _check_model(body, model_id)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' is required: a string (one prompt per request)", param="prompt")
    # OpenAI's legacy logprobs: how many of the likeliest tokens to list at each place.
    logprobs = _number(body, "logprobs", int, 0, MAX_COMPLETION_LOGPROBS)
    return Request(None, prompt, replace(_params(body, limit), logprobs=logprobs, **_response_format(body)),
                   *_streaming(body))


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
    if content is None and m["role"] == "assistant":  # an answer that was calls alone
        content = ""
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string", param=f"{where}.content")
    message: Message = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise ApiError(400, f"{where}.tool_call_id is required: the id of the call this answers",
                           param=f"{where}.tool_call_id")
        message["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):  # not OpenAI's, but some templates name the tool
            message["name"] = m["name"]
    elif m["role"] == "assistant" and m.get("tool_calls"):
        message["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
    return message


def _tool_calls(calls, where: str) -> list[dict]:
    """An assistant turn's calls, as roost keeps them: OpenAI's shape, arguments as JSON text
    of an object (some clients send the object itself)."""
    if not isinstance(calls, list):
        raise ApiError(400, f"{where} must be a list of calls", param=where)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id", ""), str):
            raise ApiError(400, f'{where}[{j}] must be {{"id", "type": "function", "function": {{"name", '
                                f'"arguments"}}}}', param=f"{where}[{j}]")
        arguments = fn.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ApiError(400, f"{where}[{j}].function.arguments must be a JSON object (as text)",
                           param=f"{where}[{j}].function.arguments")
        out.append({"id": call.get("id", ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": json.dumps(parsed, ensure_ascii=False)}})
    return out


def _tools(body: dict) -> dict:
    """tools and tool_choice as Params fields: the tools (OpenAI's list, as JSON text) for the
    chat template, and whether a call must be made and to which function. parallel_tool_calls
    is accepted: every call a model writes comes back, as with llama-server."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if body.get("parallel_tool_calls") not in (None, True, False):
        raise ApiError(400, "parallel_tool_calls must be true or false", param="parallel_tool_calls")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice asks for a call, but no tools were sent", param="tool_choice")
        return {}
    if not isinstance(tools, list):
        raise ApiError(400, 'tools must be a list of {"type": "function", "function": {"name", "parameters"}}',
                       param="tools")
    names = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise ApiError(400, f'{where} must be {{"type": "function", "function": {{...}}}}: only function tools '
                                "are supported", param=where)
        name, parameters = fn.get("name"), fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise ApiError(400, f"{where}.function.name must be 1 to 64 letters, digits, _ or -, not {name!r}",
                           param=f"{where}.function.name")
        if name in names:
            raise ApiError(400, f"{where}.function.name: {name!r} is named twice", param=f"{where}.function.name")
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ApiError(400, f'{where}.function.parameters must be a JSON schema of an object ({{"type": '
                                '"object", "properties": {...}}})', param=f"{where}.function.parameters")
        if not isinstance(fn.get("description", ""), str):
            raise ApiError(400, f"{where}.function.description must be a string", param=f"{where}.function.description")
        names.append(name)
    name = None
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) and choice.get("type") == "function" else None
        if name not in names:
            raise ApiError(400, f'tool_choice must name one of the tools ({", ".join(names)}): '
                                '{"type": "function", "function": {"name": ...}}', param="tool_choice")
        choice = "required"
    elif choice is None:
        choice = "auto"
    elif choice not in TOOL_CHOICES:
        raise ApiError(400, f"tool_choice must be one of {', '.join(TOOL_CHOICES)}, or a function to call, "
                            f"not {choice!r}", param="tool_choice")
    return {"tools": json.dumps(tools, ensure_ascii=False), "tool_choice": choice, "tool_name": name}


def _response_format(body: dict) -> dict:
    """response_format as Params fields: the JSON schema the answer must match (json_object:
    any object). A schema's `strict` false is held to all the same: the grammar cannot
    hold to less, and an answer that matches is what the client wanted."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if fmt is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"schema": json.dumps({"type": "object"})}
    if kind != "json_schema":
        raise ApiError(400, 'response_format must be {"type": "text"}, {"type": "json_object"} or {"type": '
                            f'"json_schema", "json_schema": {{"name", "schema", "strict"}}}}, not {fmt!r}',
                       param="response_format")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ApiError(400, 'response_format.json_schema must be {"name", "schema", "strict"}, its schema a JSON '
                            "schema object", param="response_format")
    try:
        to_gbnf(spec["schema"])
    except UsageError as e:
        raise ApiError(400, f"response_format: {e}", param="response_format") from None
    return {"schema": json.dumps(spec["schema"], ensure_ascii=False)}


def _params(body: dict, limit: int) -> Params:
    for name, (asks_nothing, why) in REFUSED.items():
        if body.get(name) not in asks_nothing:
            raise ApiError(400, why, param=name)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        max_tokens = _number(body, "max_tokens" if "max_tokens" in body else "max_completion_tokens", int, 1, None)
        # More than the context holds just ends at its end (finish_reason "length"), as
        # with llama-server; more than the model could ever hold is a mistake worth saying.
        if max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}, more than this model can ever hold "
                                f"({limit} tokens of context)", param="max_tokens")
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
    # The penalties are OpenAI's alone, within its bounds.
    return Params(max_tokens=max_tokens, seed=seed, stop=tuple(stop),
                  **{name: _number(body, name, float, -2, 2, 0.0) for name in ("presence_penalty", "frequency_penalty")},
                  **{s.name: _number(body, s.name, s.kind, s.low, s.high, s.default) for s in sampling.SETTINGS})


def _chat_logprobs(body: dict) -> int | None:
    """Chat's logprobs (true or false) and top_logprobs (how many of the likeliest tokens
    at each place) as Params.logprobs."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, f"logprobs must be true or false, not {wanted!r}", param="logprobs")
    top = _number(body, "top_logprobs", int, 0, MAX_TOP_LOGPROBS, 0)
    if top and not wanted:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return top if wanted else None


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
