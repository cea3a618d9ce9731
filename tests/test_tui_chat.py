"""The chat screen driven by Pilot, with the real SmolLM2 model and llama.cpp (what the
screen does whatever the answer says runs on a recorded one: tests/replay.py)."""

import os
import signal

import psutil
import pytest

from conftest import crash_in
from pilot import ask, ask_and_wait, chat, drive, notes, until
from replay import ReplayEngine
from roost import history
from roost.backends import load
from roost.backends.base import Params, Plan
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen
from roost.tui.widgets.status import StatusBar


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
        assert not prompt.disabled and prompt.has_focus  # the prompt stays usable
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
