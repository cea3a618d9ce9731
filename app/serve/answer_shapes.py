"""What an answer looks like on the wire: a chat's or a completion's body, whole or as the
chunks of a stream, and an engine's error as the OpenAI API says it."""

from __future__ import annotations

import time
import uuid

from roost.backends.base import ANSWER, Done
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


class ChatShape:
    """/v1/chat/completions: a message, or chunks of deltas; a thought as
    `reasoning_content` beside the answer's `content`."""

    def __init__(self, model_id: str):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}

    def _chunk(self, choices: list, **extra) -> dict:
        return {**self.head, "object": "chat.completion.chunk", "choices": choices, **extra}

    def opening(self) -> dict:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def piece(self, text: str, kind: str = ANSWER) -> dict:
        field = "content" if kind == ANSWER else "reasoning_content"
        return self._chunk([{"index": 0, "delta": {field: text}, "finish_reason": None}])

    def closing(self, stats) -> dict:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": openai_api.finish_reason(stats)}],
                           **openai_api.finished(stats))

    def usage(self, stats) -> dict:
        return self._chunk([], usage=openai_api.usage(stats))

    def whole(self, done: Done) -> dict:
        message = {"role": "assistant", "content": done.text}
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": openai_api.finish_reason(done.stats)}],
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}


class CompletionShape:
    """/v1/completions: text, or chunks of text."""

    def __init__(self, model_id: str):
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": model_id}

    def _choice(self, text: str, finish: str | None) -> list:
        return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]

    def opening(self) -> dict:
        return {**self.head, "choices": self._choice("", None)}

    def piece(self, text: str, kind: str = ANSWER) -> dict:
        # Raw text is never split (the engines' complete()): every piece is text.
        return {**self.head, "choices": self._choice(text, None)}

    def closing(self, stats) -> dict:
        return {**self.head, "choices": self._choice("", openai_api.finish_reason(stats)), **openai_api.finished(stats)}

    def usage(self, stats) -> dict:
        return {**self.head, "choices": [], "usage": openai_api.usage(stats)}

    def whole(self, done: Done) -> dict:
        return {**self.head, "choices": self._choice(done.text, openai_api.finish_reason(done.stats)),
                "usage": openai_api.usage(done.stats), **openai_api.finished(done.stats)}
