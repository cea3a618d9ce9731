"""A Session records a conversation as the views showed it."""

import pytest

from roost.backends.base import Cancel, Done, Params, Token
from roost.errors import ContextOverflow
from roost.session import Session


def test_turns_are_recorded_and_the_cache_carries_over(engine):
    session = Session(engine, Params(temperature=0, max_tokens=40), system="Answer briefly.")
    first = [e for e in session.send("What is the capital of Japan?")]
    assert isinstance(first[-1], Done) and "Tokyo" in first[-1].text
    list(session.send("And of Italy?"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first[-1].text
    assert session.stats[1].cached_tokens > session.stats[0].prompt_tokens


def test_cancelled_answer_is_kept_as_far_as_it_got(engine):
    session = Session(engine, Params(temperature=0, max_tokens=200))
    cancel = Cancel()
    shown = ""
    for event in session.send("Write a long story about a dragon.", cancel):
        if isinstance(event, Token):
            shown += event.text
            cancel.set()
    assert session.stats[-1].stop_reason == "cancelled"
    assert session.messages[-1] == {"role": "assistant", "content": shown}


def test_failed_question_is_not_left_unanswered(make_engine):
    session = Session(make_engine(n_ctx=64), Params(max_tokens=5))
    with pytest.raises(ContextOverflow):
        list(session.send("word " * 100))
    assert session.messages == []
    list(session.send("Hi"))
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_saved_conversation_reloads_and_survives_a_torn_write(engine, tmp_path, monkeypatch):
    from roost import history

    monkeypatch.setenv("ROOST_HISTORY_DIR", str(tmp_path))
    saved = history.Conversation.create("SmolLM2", system="Answer briefly.")
    session = Session(engine, Params(temperature=0, max_tokens=30), system="Answer briefly.", saved=saved)
    list(session.send("What is the capital of Japan?"))
    with pytest.raises(ContextOverflow):
        list(session.send("word " * 3000))
    with open(saved.path, "a") as f:
        f.write('{"type": "message", "role": "assistant", "content": "half an ans')  # killed mid-write
    meta, messages = saved.load()
    assert meta["model"] == "SmolLM2" and messages == session.messages
    (summary,) = history.conversations()
    assert summary.title == "What is the capital of Japan?" and summary.messages == 3
    # A reopened conversation carries on where it stopped, in the same file.
    again = Session(engine, Params(temperature=0, max_tokens=30), messages=list(messages), saved=saved)
    list(again.send("And of Italy?"))
    assert len(saved.load()[1]) == 5


def test_a_thought_is_saved_with_its_answer_and_kept_out_of_the_next_prompt():
    from roost.history import Conversation
    from test_reasoning import STREAMS, template
    from test_thinking_loop import ScriptedModel

    source, tokens, _ = STREAMS["qwen3"]
    engine = ScriptedModel(template(source), tokens)
    session = Session(engine, Params(), saved=Conversation.create("qwen3"))
    done = list(session.send("Capital?"))[-1]
    assert (done.text, done.reasoning) == ("Paris is the capital.", "The user asks for the capital.")
    assert session.messages[-1] == {"role": "assistant", "content": "Paris is the capital."}
    _, saved = Conversation(session.saved.path).load()
    assert saved[-1] == {"role": "assistant", "content": "Paris is the capital.",
                         "reasoning": "The user asks for the capital."}
    # The next turn, on the reloaded conversation too, gives the model the answer alone.
    again = Session(engine, Params(), messages=saved)
    list(again.send("And Italy's?"))
    prompt = "".join(engine.vocab[t] for t in engine.prompts[-1])
    assert "Paris is the capital." in prompt and "asks for the capital" not in prompt
