"""The chat screen driven by Pilot, with the real SmolLM2 model and llama.cpp (what the
screen does whatever the answer says runs on a recorded one: tests/replay.py)."""

import json
import os
import signal

import psutil
import pytest

from conftest import crash_in
from pilot import ask, ask_and_wait, chat, drive, notes, until
from replay import THINKING, THINKING_QUESTION, ReplayEngine
from textual.color import Color
from textual.widgets._footer import FooterKey
from roost import history
from roost.backends import load
from roost.backends.base import Params, Plan
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen
from roost.tui.widgets.status import StatusBar
from roost.tui.widgets.thought import Thought


def status_text(screen) -> str:
    bar = screen.query_one(StatusBar)
    return " ".join(str(w.render()) for w in bar.query("Static"))


def test_answer_streams_in_with_live_stats(demo_gguf):
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        answer = screen.query(".assistant").last()
        assert "Tokyo" in answer.source
        stats = screen.session.stats[-1]
        assert stats.decode_tps > 0 and stats.context_tokens > stats.prompt_tokens
        shown = status_text(screen)
        assert "tok/s" in shown and f"ctx {stats.context_tokens}/2048" in shown and "RSS" in shown
        assert "gen 0.0" not in shown

    chat(scenario, demo_gguf, size=(100, 30))


def test_escape_stops_and_keeps_the_partial_answer(demo_gguf):
    async def scenario(app, screen, pilot):
        screen.params = Params(temperature=0, max_tokens=2000)
        screen.session.params = screen.params
        await ask(screen, pilot, "Write a very long story about a dragon.")
        await until(pilot, lambda: screen.query(".assistant").last().source)
        await pilot.press("escape")
        await until(pilot, lambda: not screen.generating)
        assert screen.session.stats[-1].stop_reason == "cancelled"
        answer = screen.query(".assistant").last()
        assert answer.has_class("stopped") and answer.source
        assert screen.session.messages[-1] == {"role": "assistant", "content": answer.source}

    chat(scenario, demo_gguf, size=(100, 30))


def test_new_chat_and_prompt_history():
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")
        await pilot.press("ctrl+n")
        assert screen.session.messages == [] and not screen.query(".assistant")
        await pilot.press("up")
        assert screen.query_one("#prompt").value == "Hi"

    chat(scenario, ReplayEngine(gap_s=0), size=(100, 30))


@pytest.mark.slow
def test_conversations_are_saved_and_reopened(demo_gguf):
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        await pilot.press("ctrl+n")
        assert not screen.query(".assistant")
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.query(".assistant")) == 1)
        assert "Tokyo" in screen.query(".assistant").last().source
        assert [m["role"] for m in screen.session.messages] == ["user", "assistant"]
        await ask_and_wait(screen, pilot, "And of Italy?")
        assert screen.session.stats[-1].cached_tokens > 0  # the engine still held the reopened turns

    chat(scenario, demo_gguf, size=(100, 30))


# -- the engine's process dying ------------------------------------------------------------
# Real crashes in the engine's own process, through its test-only hook (backends/child_main.py).

SIGNAL_NAMES = {"segv": "SIGSEGV", "abort": "SIGABRT", "kill": "SIGKILL"}
DOING = {"load": "loading the model", "prefill": "reading the prompt", "stream:3": "answering"}


def isolated_chat(scenario, demo_gguf, params=Params(temperature=0, max_tokens=60)):
    """As pilot.chat, with the engine in its own process as `roost chat` runs it; the
    scenario starts once the model is loaded, or has crashed loading."""
    app = RoostApp(lambda: load(demo_gguf, Plan(n_ctx=2048), isolated=True), "SmolLM2", params)

    async def main(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen)
                    and (app.screen.session is not None or app.screen.crash is not None))
        screen = app.screen
        await scenario(app, screen, pilot)
        screen.cancel.set()
        await until(pilot, lambda: not screen.generating)

    drive(app, main, (100, 30))


@pytest.mark.slow
@pytest.mark.parametrize("where, how", [("load", "abort"), ("prefill", "kill"), ("stream:3", "segv")])
def test_an_engine_crash_is_one_line_and_the_next_question_loads_it_again(demo_gguf, monkeypatch, tmp_path,
                                                                          where, how):
    crash_in(monkeypatch, tmp_path, where, how)
    said = []  # every notification, kept: Textual's own list drops them once they time out

    async def scenario(app, screen, pilot):
        notify = app.notify
        app.notify = lambda message, *args, **kwargs: (said.append(message), notify(message, *args, **kwargs))[1]
        first = screen.engine
        if where != "load":
            await ask_and_wait(screen, pilot, "What is the capital of Japan?")
            answer = screen.query(".assistant").last()
            assert answer.has_class("error")
            if where == "stream:3":  # what came before the crash stays on screen
                assert answer.source and not answer.source.startswith("*no answer")
            assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE
        line = f"the engine crashed ({SIGNAL_NAMES[how]}"
        shown = status_text(screen)
        assert line in shown and f"while {DOING[where]}" in shown and "your next question loads the model again" in shown
        prompt = screen.query_one("#prompt")
        # The prompt stays usable (Textual moves the focus on its next turn, hence the wait).
        await until(pilot, lambda: not prompt.disabled and prompt.has_focus)
        await ask(screen, pilot, "What is the capital of Japan?")
        await until(pilot, lambda: screen.engine not in (None, first))
        await until(pilot, lambda: not screen.generating)
        assert any("loaded again" in n for n in said)  # it says so
        assert "Tokyo" in screen.query(".assistant").last().source
        assert screen.engine is not first and screen.engine.alive and screen.crash is None
        assert len(screen.query(".user")) == (1 if where == "load" else 2)

    isolated_chat(scenario, demo_gguf)


@pytest.mark.slow
def test_after_a_crash_the_conversation_stays_on_screen_and_in_history(demo_gguf, monkeypatch, tmp_path):
    crash_in(monkeypatch, tmp_path, "stream:20", "segv")  # the first answer is shorter: the second dies

    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        first_answer = screen.session.messages[-1]["content"]
        assert "Tokyo" in first_answer
        await ask_and_wait(screen, pilot, "Write a long story about a dragon.")
        assert "(SIGSEGV) while answering" in status_text(screen)
        # On screen: both questions, the first answer, what came of the second.
        assert len(screen.query(".user")) == 2 and screen.query(".assistant").first().source == first_answer
        # In history: the conversation as it was before the answer that never finished.
        _, saved = history.Conversation(screen.session.saved.path).load()
        assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"] == first_answer
        await ask_and_wait(screen, pilot, "And of Italy?")
        assert [m["role"] for m in screen.session.messages] == ["user", "assistant"] * 2
        assert screen.session.stats[-1].cached_tokens == 0  # a new process: the conversation prefilled anew
        _, saved = history.Conversation(screen.session.saved.path).load()
        assert len(saved) == 4

    isolated_chat(scenario, demo_gguf)


@pytest.mark.slow
def test_an_engine_killed_between_answers_is_found_and_loaded_again(demo_gguf):
    async def scenario(app, screen, pilot):
        first = screen.engine
        os.kill(first.pid, signal.SIGKILL)  # as the out-of-memory killer does, while nobody asks anything
        await until(pilot, lambda: screen.crash is not None, timeout=10)  # the memory reading finds it
        assert "(SIGKILL, which the out-of-memory killer sends) while idle" in status_text(screen)
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        assert "Tokyo" in screen.query(".assistant").last().source and screen.engine is not first

    isolated_chat(scenario, demo_gguf)


def test_roost_chat_runs_the_engine_in_a_process_of_its_own(demo_gguf, monkeypatch):
    from roost import cli

    opened = []
    monkeypatch.setattr(RoostApp, "run", lambda app: opened.append(app))  # the app as `roost chat` builds it
    assert cli.main(["chat", demo_gguf, "--ctx", "512"]) == 0
    engine = opened[0].load_engine()
    try:
        assert engine.pid in [p.pid for p in psutil.Process().children()] and engine.info().n_ctx == 512
    finally:
        engine.close()


# -- a reasoning model's thought ---------------------------------------------------------
# A recorded stream of the demo model made a reasoning one (tests/replay.py, THINKING): 14
# tokens of thought, closed by a budget, then the answer.

def thinking_replay(pause_after=None) -> ReplayEngine:
    return ReplayEngine(THINKING, pause_after=pause_after, gap_s=0)


RECORDED_THOUGHT = thinking_replay().recorded["events"]
FIRST_ANSWER = next(i for i, e in enumerate(RECORDED_THOUGHT) if e.get("token", {}).get("kind") == "answer")


def tokens(kind, upto) -> str:
    return "".join(e["token"]["text"] for e in RECORDED_THOUGHT[:upto] if e["token"]["kind"] == kind)


def footer_keys(screen) -> list[str]:
    return [key.description for key in screen.query(FooterKey)]


def test_at_80_columns_the_footer_shows_every_key_it_offers_quit_first():
    """tmux over SSH is 80 columns: the footer cuts what does not fit at its right end."""
    async def scenario(app, screen, pilot):
        shown = lambda: {k.key: k for k in screen.query(FooterKey)}  # noqa: E731
        assert "ctrl+q" in shown() and "escape" not in shown()  # Stop only while an answer runs
        await ask(screen, pilot, THINKING_QUESTION)
        await until(pilot, lambda: not screen.generating and screen.session.messages)
        await until(pilot, lambda: {"ctrl+q", "ctrl+t", "ctrl+g", "ctrl+f"} <= set(shown()))
        keys = sorted(shown().values(), key=lambda k: k.region.x)
        assert keys[0].key == "ctrl+q"
        assert all(k.region.right <= 80 and k.region.width > 0 for k in keys), [(k.key, k.region) for k in keys]
        label = screen.query_one("FooterLabel")  # the marks' one entry, after their keys
        assert "Good/Bad" in str(label.render()) and 0 < label.region.right <= 80

    chat(scenario, thinking_replay(), size=(80, 24))


def test_a_thought_streams_dimmed_then_folds_to_its_counts_when_the_answer_starts():
    engine = thinking_replay(pause_after=(5, FIRST_ANSWER + 3))

    async def scenario(app, screen, pilot):
        await until(pilot, lambda: "Thought" in footer_keys(screen))  # the model reasons: Ctrl+T is offered
        await ask(screen, pilot, THINKING_QUESTION)
        thought, answer = screen.query_one(Thought), screen.query(".assistant").last()
        # Drawn in batches: the first token at once, more as more come.
        await until(pilot, lambda: engine.held == 1 and thought.text)
        assert tokens("reasoning", 5).startswith(thought.text)
        assert thought.display and not thought.over and str(thought.render()) == thought.text
        shade = lambda widget: Color.from_rich_color(widget.rich_style.color).brightness  # as drawn
        assert shade(thought) < shade(answer)  # dimmed beside the answer
        assert not answer.source and "TTFT" in status_text(screen) and "thinking" in status_text(screen)

        engine.resume.set()  # on into the answer
        await until(pilot, lambda: engine.held == 2 and answer.source)  # the answer's first token is drawn at once
        assert tokens("answer", FIRST_ANSWER + 3).startswith(answer.source)
        first = RECORDED_THOUGHT[FIRST_ANSWER]["token"]  # the counts at the answer's first token
        assert str(thought.render()) == f"▸ thought for {first['decode_s']:.1f} s · {first['generated'] - 1} tokens"
        assert thought.text == tokens("reasoning", FIRST_ANSWER)
        assert f"answer {first['ttft_s'] + first['decode_s']:.1f} s" in status_text(screen)

        engine.resume.set()
        await until(pilot, lambda: not screen.generating)
        s = screen.session.stats[-1]  # once it is over, Done's own counts
        assert str(thought.render()) == f"▸ thought for {s.reasoning_s:.1f} s · {s.reasoning_tokens} tokens"
        assert f"TTFT {s.ttft_s:.2f} s · answer {s.answer_ttft_s:.1f} s" in status_text(screen)
        assert answer.source == screen.session.messages[-1]["content"] and "<think>" not in answer.source

        await pilot.press("ctrl+t")  # shown again, under its counts
        assert str(thought.render()) == (f"▾ thought for {s.reasoning_s:.1f} s · {s.reasoning_tokens} tokens\n"
                                         f"{thought.text.strip()}")
        await pilot.press("ctrl+t")
        assert str(thought.render()).startswith("▸ thought for")

    chat(scenario, engine, size=(100, 30))


def test_a_stream_that_ends_inside_the_thought_keeps_it_open_with_its_counts():
    engine = thinking_replay(pause_after=5)

    async def scenario(app, screen, pilot):
        await ask(screen, pilot, THINKING_QUESTION)
        await until(pilot, lambda: engine.held == 1)
        await pilot.press("escape")
        await until(pilot, lambda: not screen.generating)
        s = screen.session.stats[-1]
        assert s.stop_reason == "cancelled" and s.answer_ttft_s is None and s.reasoning_tokens == 5
        thought = screen.query_one(Thought)
        assert str(thought.render()) == f"▾ thought for {s.reasoning_s:.1f} s · 5 tokens\n{tokens('reasoning', 5)}"
        await pilot.press("ctrl+t")  # it folds like any other
        assert str(thought.render()) == f"▸ thought for {s.reasoning_s:.1f} s · 5 tokens"

    chat(scenario, engine, size=(100, 30))


def test_a_model_that_does_not_reason_has_no_thought_and_no_key_for_one():
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")
        assert "Thought" not in footer_keys(screen)
        assert not screen.query_one(Thought).display
        assert "answer" not in status_text(screen) and "thinking" not in status_text(screen)

    chat(scenario, ReplayEngine(gap_s=0), size=(100, 30))


def test_history_keeps_the_thought_apart_and_shows_it_folded_when_reopened():
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, THINKING_QUESTION)
        done = RECORDED_THOUGHT[-1]["done"]
        with open(screen.session.saved.path) as f:
            saved = [json.loads(line) for line in f]
        assert saved[-1]["role"] == "assistant"
        assert saved[-1]["content"] == done["text"] and saved[-1]["reasoning"] == done["reasoning"]

        await pilot.press("ctrl+n")
        assert not screen.query(Thought)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.query(".assistant")) == 1)
        thought = screen.query_one(Thought)
        words = len(done["reasoning"].split())
        assert thought.display and str(thought.render()) == f"▸ thought · {words} words"
        assert screen.query(".assistant").last().source == done["text"]
        assert screen.session.messages[-1]["reasoning"] == done["reasoning"]  # kept, never sent (the engine drops it)
        await pilot.press("ctrl+t")
        assert str(thought.render()) == f"▾ thought · {words} words\n{done['reasoning'].strip()}"

    chat(scenario, thinking_replay(), size=(100, 30))


@pytest.mark.slow
def test_a_real_reasoning_model_thinks_within_its_budget_then_answers(thinking_gguf):
    # A question the small model would think about past its budget (asked the capital of
    # Japan, with flash attention on it ends its turn inside the thought).
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Write a very long story about a dragon.")
        s = screen.session.stats[-1]
        thought, answer = screen.query_one(Thought), screen.query(".assistant").last()
        assert 12 <= s.reasoning_tokens and s.answer_ttft_s is not None and answer.source
        with open(screen.session.saved.path) as f:
            saved = [json.loads(line) for line in f][-1]
        assert thought.folded and thought.text.strip() and saved["reasoning"] == thought.text
        assert str(thought.render()) == f"▸ thought for {s.reasoning_s:.1f} s · {s.reasoning_tokens} tokens"
        assert "</think>" not in answer.source and answer.source == screen.session.messages[-1]["content"]

    chat(scenario, thinking_gguf, Params(temperature=0, max_tokens=48, think_budget=12), size=(100, 30))
