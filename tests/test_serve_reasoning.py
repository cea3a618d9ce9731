"""A reasoning model behind `roost serve`, over real HTTP on 127.0.0.1: the thought as
`reasoning_content` beside the answer's `content` (what llama-server and DeepSeek's API
send), the thinking controls a request gives (`reasoning_effort`, `chat_template_kwargs`,
`thinking_budget_tokens`) or the server's own --think and --think-budget, and the remote
engine reading the thought back, from a roost server and from another one.

The model is the real SmolLM2 with a template that opens `<think>` in the prompt
(conftest's thinking_gguf): it never closes the thought itself, so without a budget all it
writes is thought, and with one the thought ends there and an answer follows."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from conftest import openai_client as client, served
from roost.backends import connect, load
from roost.backends.base import ANSWER, REASONING, Params, Plan, Token
from roost.backends.reasoning import THINK

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
ASK = dict(model="demo", messages=STORY, temperature=0, max_tokens=48)


@pytest.fixture(scope="module")
def thinker(thinking_gguf):
    engine = load(thinking_gguf, Plan(n_ctx=512), engine="llama")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(thinker):
    with served(thinker) as url:
        yield url


def post(url, body):
    return httpx2.post(url + "/v1/chat/completions", json=body, timeout=120)


def within_budget(thought_tokens: int, budget: int) -> bool:
    # The budget's tokens, then the closing tag roost writes (a few tokens, never more than its characters).
    return budget <= thought_tokens <= budget + len(THINK.close_text)


def thought_then_answer(kinds: list[str]) -> bool:
    """The whole thought first, then the answer: both there, and never back again."""
    cut = kinds.index(ANSWER) if ANSWER in kinds else 0
    return 0 < cut < len(kinds) and kinds == [REASONING] * cut + [ANSWER] * (len(kinds) - cut)


def test_the_openai_client_reads_the_thought_apart_whole_and_streamed(url):
    api = client(url)
    whole = api.chat.completions.create(**ASK, extra_body={"thinking_budget_tokens": 16})
    message, usage = whole.choices[0].message, whole.usage
    assert message.reasoning_content.strip() and message.content.strip()  # a thought, then an answer
    assert "<think>" not in message.content + message.reasoning_content
    assert within_budget(usage.completion_tokens_details.reasoning_tokens, 16)
    assert usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens
    stats = whole.model_extra["roost"]
    assert stats["reasoning_tokens"] == usage.completion_tokens_details.reasoning_tokens
    assert stats["answer_ttft_s"] > stats["ttft_s"]

    chunks = list(api.chat.completions.create(**ASK, extra_body={"thinking_budget_tokens": 16}, stream=True,
                                              stream_options={"include_usage": True}))
    pieces = []
    for delta in (c.choices[0].delta for c in chunks if c.choices):
        thought = getattr(delta, "reasoning_content", None)  # beyond the client's types: read as an extra field
        pieces += [(REASONING, thought)] if thought else [(ANSWER, delta.content)] if delta.content else []
    assert thought_then_answer([kind for kind, _ in pieces])
    assert "".join(t for k, t in pieces if k == REASONING) == message.reasoning_content  # greedy: the same
    assert "".join(t for k, t in pieces if k == ANSWER) == message.content
    streamed = chunks[-1].usage.completion_tokens_details
    assert streamed.reasoning_tokens == usage.completion_tokens_details.reasoning_tokens


def test_without_a_budget_it_is_all_thought_and_thinking_off_is_all_answer(url):
    short = {**ASK, "max_tokens": 24}
    thought = post(url, short).json()
    assert thought["choices"][0]["message"]["content"] == "" and thought["choices"][0]["message"]["reasoning_content"]
    assert thought["usage"]["completion_tokens_details"]["reasoning_tokens"] == thought["usage"]["completion_tokens"]
    # Off, as Qwen3's template variable says it, or as OpenAI's effort does: the template
    # closes the thought in the prompt, and all the model writes is answer.
    for off in ({"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_effort": "none"}):
        answer = post(url, {**short, **off}).json()
        message = answer["choices"][0]["message"]
        assert "reasoning_content" not in message and message["content"].strip(), off
        assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_the_servers_think_and_budget_are_what_a_request_that_does_not_say_gets(thinker):
    short = {**ASK, "max_tokens": 24}
    with served(thinker, think="off") as url:
        assert "reasoning_content" not in post(url, short).json()["choices"][0]["message"]
        asked = post(url, {**short, "chat_template_kwargs": {"enable_thinking": True}}).json()
        assert asked["choices"][0]["message"]["reasoning_content"]  # the request's own word wins
    with served(thinker, think_budget=16) as url:
        budgeted = post(url, ASK).json()
        assert within_budget(budgeted["usage"]["completion_tokens_details"]["reasoning_tokens"], 16)
        assert budgeted["choices"][0]["message"]["content"].strip()
        none = post(url, {**short, "thinking_budget_tokens": 0}).json()
        assert none["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


BAD = {
    "budget below 0": ({"thinking_budget_tokens": -1}, "thinking_budget_tokens"),
    "budget a fraction": ({"thinking_budget_tokens": 1.5}, "thinking_budget_tokens"),
    "budget text": ({"thinking_budget_tokens": "ten"}, "thinking_budget_tokens"),
    "unknown effort": ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    "effort a list": ({"reasoning_effort": ["high"]}, "reasoning_effort"),
    "kwargs not an object": ({"chat_template_kwargs": "enable_thinking=false"}, "chat_template_kwargs"),
    "enable_thinking not a bool": ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs"),
    "effort and off disagree": ({"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}},
                                "reasoning_effort"),
}


def test_bad_thinking_fields_get_one_clear_400(url):
    for name, (fields, param) in BAD.items():
        r = post(url, {**ASK, **fields})
        assert r.status_code == 400, (name, r.text)
        error = r.json()["error"]
        assert error["param"] == param and param in error["message"] and "\n" not in error["message"], name


def test_raw_completions_stay_raw_text(url):
    r = httpx2.post(url + "/v1/completions", timeout=120, json={
        "model": "demo", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 8}).json()
    assert "Paris" in r["choices"][0]["text"] and "reasoning_content" not in r["choices"][0]
    assert r["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


# -- the remote engine ---------------------------------------------------------------------


def test_the_remote_engine_tells_thought_from_answer_as_the_local_engine_does(thinker, url):
    asked = Params(temperature=0, max_tokens=48, think_budget=16)
    local = list(thinker.stream(STORY, asked))
    remote_engine = connect(url)
    try:
        remote = list(remote_engine.stream(STORY, asked))
        off = remote_engine.stream(STORY, Params(temperature=0, max_tokens=16, think="off"))
        assert {e.kind for e in off if isinstance(e, Token)} == {ANSWER}  # --think off reached the server
    finally:
        remote_engine.close()
    assert thought_then_answer([e.kind for e in remote[:-1]])
    done, here = remote[-1], local[-1]
    assert (done.text, done.reasoning) == (here.text, here.reasoning) and done.reasoning and done.text
    assert done.reasoning == "".join(e.text for e in remote[:-1] if e.kind == REASONING)
    assert done.stats.reasoning_tokens == here.stats.reasoning_tokens
    assert done.stats.answer_ttft_s > done.stats.ttft_s  # seen here, after the thought


class _OtherServer(ThreadingHTTPServer):
    """An OpenAI-compatible server that is not roost, as vLLM answers: the thought as
    `reasoning`, the count of its tokens in usage, no roost stats; it keeps the bodies it
    was sent."""

    CHUNKS = [{"reasoning": "Dragons"}, {"reasoning": " cook?"}, {"reasoning": " Hm.", "content": "Once"},
              {"content": " upon a time.\n"}, {"reasoning": "Long enough?"}, {"content": "The end."}]

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _OtherHandler)
        self.bodies = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _OtherHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body: bytes, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._send(200, json.dumps({"object": "list", "data": [{"id": "other"}]}).encode())
        self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self):
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in _OtherServer.CHUNKS]
        chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                   {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16,
                                             "completion_tokens_details": {"reasoning_tokens": 4}}}]
        self._send(200, b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n",
                   "text/event-stream")


@pytest.fixture
def other_server():
    server = _OtherServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(10)
    server.server_close()


def test_the_remote_engine_reads_another_servers_reasoning_and_sends_it_the_controls(other_server):
    engine = connect(other_server.url)
    try:
        events = list(engine.stream(STORY, Params(think="high", think_budget=32)))
        list(engine.stream(STORY, Params(think="off", template_vars=(("style", "terse"),))))
        list(engine.stream(STORY, Params()))
    finally:
        engine.close()
    done = events[-1]
    assert [(e.kind, e.text) for e in events[:-1]] == [
        (REASONING, "Dragons"), (REASONING, " cook?"), (REASONING, " Hm."), (ANSWER, "Once"),
        (ANSWER, " upon a time.\n"), (REASONING, "Long enough?"), (ANSWER, "The end.")]
    # A second thought is kept apart from the first, as the local engine keeps it.
    assert (done.reasoning, done.text) == ("Dragons cook? Hm.\n\nLong enough?", "Once upon a time.\nThe end.")
    assert done.stats.reasoning_tokens == 4 and done.stats.generated_tokens == 7  # the server's own count
    assert done.stats.answer_ttft_s >= done.stats.ttft_s > 0  # timed here, at the first answer chunk
    effort, off, plain = other_server.bodies
    assert effort["reasoning_effort"] == "high" and effort["thinking_budget_tokens"] == 32
    assert "chat_template_kwargs" not in effort
    assert off["chat_template_kwargs"] == {"style": "terse", "enable_thinking": False} and "reasoning_effort" not in off
    assert not {"reasoning_effort", "chat_template_kwargs", "thinking_budget_tokens"} & set(plain)


@pytest.mark.slow
def test_roost_serve_think_flags_are_the_servers_defaults(thinking_gguf):
    from test_serve import Serve

    server = Serve(thinking_gguf, "--port", "0", "--ctx", "512", "--think-budget", "16")
    try:
        budgeted = post(server.url, {**ASK, "model": "SmolLM2-think"}).json()
    finally:
        code, err = server.stop()
    assert code == 130 and "Traceback" not in err
    assert within_budget(budgeted["usage"]["completion_tokens_details"]["reasoning_tokens"], 16)
    assert budgeted["choices"][0]["message"]["content"].strip()
