"""The chat screen driven by Pilot, with the real SmolLM2 model and llama.cpp."""

from pilot import ask, ask_and_wait, chat, until
from roost.backends.base import Params
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


def test_new_chat_and_prompt_history(demo_gguf):
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")
        await pilot.press("ctrl+n")
        assert screen.session.messages == [] and not screen.query(".assistant")
        await pilot.press("up")
        assert screen.query_one("#prompt").value == "Hi"

    chat(scenario, demo_gguf, size=(100, 30))


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
