"""A conversation longer than the context goes on: its oldest turns are left out of what the
model is sent (context_policy.py) and kept in the record, in the chat (the Session, the
chat screen) and, when asked, in `roost serve --truncate`. The real SmolLM2 and llama.cpp,
at --ctx 512."""

import httpx2
import pytest

from conftest import served
from pilot import ask_and_wait, chat, until
from roost import context_policy, history
from roost.backends import load
from roost.backends.base import Done, Params, Plan
from roost.errors import ContextOverflow
from roost.session import Session
from roost.tui.widgets.prompt import PromptArea

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
ANSWER = 8  # tokens an answer may take: the turns' questions are what fills the context


def question(i: int) -> str:
    """About 45 tokens: a dozen turns of these and short answers pass 512."""
    return (f"Question {i + 1}. I am writing a small book about numbers and I want each chapter to open "
            f"with something surprising. What is one interesting fact about the number {i + 1}?")


def answer(session: Session, text: str) -> Done:
    return [e for e in session.send(text) if isinstance(e, Done)][-1]


# A local engine counts its prompt before sending it; a remote one cannot, and its server's
# refusal is what leaves the oldest turn out (the child engine and MLX count as llama.cpp does).
@pytest.mark.parametrize("make_engine", ["llama", pytest.param("remote", marks=pytest.mark.slow)], indirect=True)
def test_a_chat_past_its_context_goes_on_without_its_oldest_turns(make_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_HISTORY_DIR", str(tmp_path))
    engine = make_engine(n_ctx=512)
    params = Params(temperature=0, max_tokens=ANSWER)
    saved = history.Conversation.create("SmolLM2", system=SYSTEM)
    session = Session(engine, params, system=SYSTEM, saved=saved)
    dropped, cached = [], []
    for i in range(12):
        done = answer(session, question(i))
        assert done.stats.generated_tokens > 0 and done.stats.prompt_tokens < 512
        dropped.append(session.dropped)
        cached.append(done.stats.cached_tokens)
        sent = context_policy.seen(session.messages[:-1], session.first)
        assert sent[0] == {"role": "system", "content": SYSTEM} and sent[-1]["content"] == question(i)
        # A local engine leaves room for the answer; a remote one answers in what is left.
        counted = context_policy.measure(engine, sent, params)
        if counted is not None:
            assert counted.prompt_tokens == done.stats.prompt_tokens  # what was sent: the system prompt first
            assert done.stats.prompt_tokens + ANSWER <= 512
    assert dropped[0] == 0 and dropped[-1] > 0 and dropped == sorted(dropped)
    if context_policy.measure(engine, session.messages[:2], params) is not None:
        # Counted first, turns go with slack to spare (context_policy.slack): the turn after
        # a drop leaves nothing more out and reads only what is new, the rest from the cache.
        drops = [i for i in range(1, 12) if dropped[i] > dropped[i - 1]]
        assert drops and all(i + 1 not in drops for i in drops), dropped
        assert all(cached[i + 1] > 0 for i in drops if i + 1 < 12), (dropped, cached)
    # Every turn is kept, in memory and in the saved file: the record is what was shown.
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 12
    assert saved.load()[1] == session.messages
    # A question that does not fit even alone is the one clear error, and takes nothing away.
    first, kept = session.first, list(session.messages)
    with pytest.raises(ContextOverflow, match="context holds 512"):
        answer(session, "word " * 600)
    assert session.first == first and session.messages == kept
    assert answer(session, "And what about the number 13?").stats.generated_tokens > 0


def test_leaving_turns_out_keeps_whole_turns_and_the_last_question():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert context_policy.next_turn(messages, 0) == 3
    assert context_policy.next_turn(messages, 3) == 5
    assert context_policy.next_turn(messages, 5) is None
    assert context_policy.seen(messages, 3) == [messages[0], *messages[3:]]
    assert context_policy.dropped(messages, 5) == 2
    # A request's system prompt may come as several messages (system, developer): all kept.
    two = [{"role": "system", "content": "s0"}, *messages]
    assert context_policy.next_turn(two, 0) == 4 and context_policy.seen(two, 4) == [*two[:2], *two[4:]]
    assert [context_policy.room(512, Params()), context_policy.room(4096, Params()),
            context_policy.room(4096, Params(max_tokens=100))] == [256, 512, 100]


LONG_CHAT = ([{"role": "system", "content": SYSTEM}]
             + [m for i in range(10) for m in (
                 {"role": "user", "content": question(i)},
                 {"role": "assistant", "content": f"The number {i + 1} is a fine number for a chapter of its own."})]
             + [{"role": "user", "content": question(10)}])


def test_serve_refuses_a_chat_over_the_context_unless_asked_to_truncate(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=512))
    body = {"model": "demo", "messages": LONG_CHAT, "temperature": 0, "max_tokens": 16}
    try:
        with served(engine) as url:
            refused = httpx2.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert "X-Roost-Dropped-Turns" not in refused.headers
        with served(engine, truncate=True) as url:
            whole = httpx2.post(url + "/v1/chat/completions", json=body, timeout=60)
            with httpx2.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
                streamed = r.headers.get("X-Roost-Dropped-Turns")
                r.read()
        assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"]
        dropped = int(whole.headers["X-Roost-Dropped-Turns"])
        assert dropped > 0 and streamed == str(dropped)
        # The system prompt and the latest turns were sent, with room for the answer;
        # one turn more would not have left it.
        questions = [i for i, m in enumerate(LONG_CHAT) if m["role"] == "user"]
        params = Params(max_tokens=16)
        sent = context_policy.measure(engine, context_policy.seen(LONG_CHAT, questions[dropped]), params).prompt_tokens
        assert whole.json()["usage"]["prompt_tokens"] == sent and sent + 16 <= 512
        more = context_policy.seen(LONG_CHAT, questions[dropped - 1])
        try:
            assert context_policy.measure(engine, more, params).prompt_tokens + 16 > 512
        except ContextOverflow:
            pass
    finally:
        engine.close()


@pytest.mark.slow
def test_the_chat_screen_marks_the_turns_out_of_view_and_goes_on(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=512))

    async def scenario(app, screen, pilot):
        asked = 0
        label = lambda: str(screen.query_one("#context-label").content)  # noqa: E731
        warned = []  # whether the context's label warned, at each turn before the first left out
        while screen.session.dropped < 2:
            assert asked < 10, "no turn was ever left out"
            # Pasted rather than typed: a long question key by key takes seconds.
            screen.query_one(PromptArea).value = question(asked) * 2
            await ask_and_wait(screen, pilot, "")
            asked += 1
            assert screen.session.messages[-1]["role"] == "assistant"
            assert not screen.query(".assistant").last().has_class("error")
            if screen.session.dropped == 0:
                warned.append("$warning" in label())
        conversation = list(screen.query_one("#conversation").children)
        (mark,) = screen.query(".out-of-view")
        first_seen = [w for w in conversation if w.has_class("user")][screen.session.dropped]
        assert conversation.index(mark) + 1 == conversation.index(first_seen)
        await until(pilot, lambda: "--ctx" in str(mark.render()))
        assert str(mark.render()) == (f"{screen.session.dropped} earlier turns are out of the model's view"
                                      f" · --ctx 8192 fits here")
        # Nearly full, the context's label warned before turns went; they went with slack
        # to spare (context_policy.slack), and it no longer does.
        assert warned[-1] and not any(warned[:-2]), warned
        assert "$warning" not in label(), label()

    chat(scenario, engine, params=Params(temperature=0, max_tokens=8), system=SYSTEM, size=(100, 30))
