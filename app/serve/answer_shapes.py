"""What an answer looks like on the wire: a chat's or a completion's body, whole or as the
chunks of a stream, and an engine's error as the OpenAI API says it."""

from __future__ import annotations

import codecs
import time
import uuid

from roost.backends.base import ANSWER, Done, Logprob, ToolCall
from roost.errors import ContextOverflow, EngineCrashed, RoostError, TemplateError, UsageError
from roost.serve import openai_api
from roost.serve.openai_api import ApiError


def api_error(error: RoostError) -> ApiError:
    """An engine's error as the OpenAI API says it."""
    if isinstance(error, ContextOverflow):
        return ApiError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, (TemplateError, UsageError)):
        return ApiError(400, str(error))
    if isinstance(error, EngineCrashed):
        return ApiError(500, f"{error}; the server is loading the model again: retry shortly", type="server_error",
                        code="engine_crashed")
    return ApiError(500, str(error), type="server_error")


def _token(text: str) -> dict:
    """A token as OpenAI's logprobs name it: its text, and its UTF-8 bytes, which for a token
    that is part of a character are the only exact account (its text shows them escaped)."""
    raw = text.encode("utf-8", "surrogateescape")  # as the token loop keeps a token's bytes
    return {"token": raw.decode("utf-8", "backslashreplace"), "bytes": list(raw)}


def _content_logprobs(logprobs: tuple[Logprob, ...]) -> dict:
    """Chat's shape: each token with its log-probability and the likeliest at its place."""
    return {"content": [{**_token(lp.token), "logprob": lp.logprob,
                         "top_logprobs": [{**_token(t), "logprob": p} for t, p in lp.top]} for lp in logprobs]}


def _call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _finish(stats, called: bool) -> str:
    """An answer that ended on its own after calling tools finishes as "tool_calls": the
    client runs them and asks again. Cut short (max_tokens), it says so, calls or not."""
    return "tool_calls" if called and stats.stop_reason == "stop" else openai_api.finish_reason(stats)


class ChatShape:
    """/v1/chat/completions: a message, or chunks of deltas; a thought as
    `reasoning_content` beside the answer's `content`. logprobs: the request asked for
    them (the answer's tokens carry them; a thought's are left out, as OpenAI's cover the
    content)."""

    def __init__(self, model_id: str, logprobs: bool = False):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        self.logprobs = logprobs
        self.called = False  # a tool call was streamed: the answer finishes as "tool_calls"

    def _chunk(self, choices: list, **extra) -> dict:
        return {**self.head, "object": "chat.completion.chunk", "choices": choices, **extra}

    def opening(self) -> dict:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def piece(self, text: str, kind: str = ANSWER, logprobs: tuple[Logprob, ...] = ()) -> dict:
        field = "content" if kind == ANSWER else "reasoning_content"
        shown = _content_logprobs(logprobs) if self.logprobs and kind == ANSWER else None
        return self._chunk([{"index": 0, "delta": {field: text}, "logprobs": shown, "finish_reason": None}])

    def tool_call(self, call: ToolCall) -> dict:
        """One call, whole, in one delta: its index, id, name and all its arguments (OpenAI
        streams the arguments in pieces after the first; a client joins them the same way)."""
        self.called = True
        return self._chunk([{"index": 0, "delta": {"tool_calls": [{"index": call.index, **_call(call)}]},
                             "logprobs": None, "finish_reason": None}])

    def closing(self, stats) -> dict:
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None,
                             "finish_reason": _finish(stats, self.called)}], **openai_api.finished(stats))

    def usage(self, stats) -> dict:
        return self._chunk([], usage=openai_api.usage(stats))

    def whole(self, done: Done) -> dict:
        # An answer that was calls alone has no content, as OpenAI's.
        message = {"role": "assistant", "content": done.text if done.text or not done.tool_calls else None}
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        if done.tool_calls:
            message["tool_calls"] = [_call(call) for call in done.tool_calls]
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message,
                             "logprobs": _content_logprobs(done.logprobs) if self.logprobs else None,
                             "finish_reason": _finish(done.stats, bool(done.tool_calls))}],
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}


class CompletionShape:
    """/v1/completions: text, or chunks of text. logprobs: the request asked for them,
    given in OpenAI's legacy shape, each token's place counted in characters from the
    prompt's start (as llama-cpp-python's server does)."""

    def __init__(self, model_id: str, logprobs: bool = False, prompt: str = ""):
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": model_id}
        self.logprobs = logprobs
        self._offset = len(prompt)  # where the next token's text starts
        self._chars = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split over tokens

    def _choice(self, text: str, finish: str | None, logprobs: tuple[Logprob, ...] | None = None) -> list:
        shown = self._legacy(logprobs) if self.logprobs and logprobs is not None else None
        return [{"index": 0, "text": text, "logprobs": shown, "finish_reason": finish}]

    def _legacy(self, logprobs: tuple[Logprob, ...]) -> dict:
        offsets = []
        for lp in logprobs:
            offsets.append(self._offset)
            self._offset += len(self._chars.decode(lp.token.encode("utf-8", "surrogateescape")))
        return {"tokens": [_token(lp.token)["token"] for lp in logprobs],
                "token_logprobs": [lp.logprob for lp in logprobs],
                # The chosen token's always, beside the likeliest (OpenAI: up to logprobs + 1).
                "top_logprobs": [{**{_token(t)["token"]: p for t, p in lp.top}, _token(lp.token)["token"]: lp.logprob}
                                 for lp in logprobs],
                "text_offset": offsets}

    def opening(self) -> dict:
        return {**self.head, "choices": self._choice("", None)}

    def piece(self, text: str, kind: str = ANSWER, logprobs: tuple[Logprob, ...] = ()) -> dict:
        # Raw text is never split (the engines' complete()): every piece is text.
        return {**self.head, "choices": self._choice(text, None, logprobs)}

    def closing(self, stats) -> dict:
        return {**self.head, "choices": self._choice("", openai_api.finish_reason(stats)), **openai_api.finished(stats)}

    def usage(self, stats) -> dict:
        return {**self.head, "choices": [], "usage": openai_api.usage(stats)}

    def whole(self, done: Done) -> dict:
        return {**self.head, "choices": self._choice(done.text, openai_api.finish_reason(done.stats), done.logprobs),
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}
