"""The start screen, settings, the prompt, copying and model switching, driven by Pilot at
80x24. What is tested is what the screens do with an answer, not what it says: the chat
runs on a recorded SmolLM2 answer (tests/replay.py); test_tui_chat.py has the real model."""

import dataclasses
import json
import os
import re

import pytest
from textual.app import App
from textual.widgets import Label, OptionList, Select

from roost.machine import doctor
from roost.backends.base import Done, Params
from roost.tui.app import RoostApp
from roost.tui.screens.settings import FIELDS, OPTIONAL, SettingsScreen, parse
from roost.tui.screens.start import StartScreen
from roost.tui.widgets.prompt import PromptArea
from pilot import ask, ask_and_wait, chat, drive, notes, until
from replay import ReplayEngine

SHORT = Params(temperature=0, max_tokens=8)  # answers long enough to see, quick to make
MACHINES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "machines")


def text(widget) -> str:
    return str(widget.render())


@pytest.fixture
def picked(monkeypatch):
    """Engines RoostApp.pick_model was asked for; the model screen itself is not opened."""
    engines = []
    monkeypatch.setattr(RoostApp, "pick_model", lambda app, engine: engines.append(engine))
    return engines


# -- start screen ---------------------------------------------------------------------


def test_start_screen_shows_machine_engines_and_advice(monkeypatch, picked):
    path = os.path.join(MACHINES, "rtx4090.json")
    monkeypatch.setenv("ROOST_MACHINE", path)
    with open(path) as f:
        gpu = json.load(f)["nvidia"][0]["name"]
    machine, cuda_toolkit = doctor.here()
    llama, mlx, _, advice = doctor.findings(machine, cuda_toolkit)
    app = RoostApp()

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, StartScreen))
        screen = app.screen
        assert gpu in text(screen.query_one("#machine"))
        engines = screen.query_one("#engines", OptionList)
        options = {o.id: o for o in engines.options}
        assert set(options) == {"llama", "mlx"}
        assert not options["llama"].disabled and llama.detail in str(options["llama"].prompt)
        # A Linux PC: MLX's CPU build (installed here for the tests) is offered, never picked.
        assert mlx.available and not options["mlx"].disabled and not mlx.gpu_offload
        assert mlx.detail in str(options["mlx"].prompt) and "CPU build" in mlx.detail
        if not llama.gpu_offload:  # a CPU-only build on a machine with an RTX 4090
            assert any(gpu in a for a in advice)
        assert text(screen.query_one("#advice")).splitlines() == [f"• {a}" for a in advice]
        assert engines.has_focus and engines.highlighted == engines.get_option_index("llama")
        await pilot.press("down", "enter")  # MLX can be chosen by hand
        await until(pilot, lambda: picked)
        assert picked == ["mlx"]

    drive(app, scenario)


# -- settings -------------------------------------------------------------------------

FORM = {"temperature": "0.7", "top_p": "0.9", "top_k": "20", "min_p": "0", "repeat_penalty": "1.1",
        "max_tokens": "", "seed": " 42 ", "think": "model default", "think_budget": ""}


def test_parse_reads_the_form():
    base = Params(max_tokens=100, stop=("</s>",))
    assert parse(FORM, base) == Params(temperature=0.7, top_p=0.9, top_k=20, min_p=0.0, repeat_penalty=1.1,
                                       max_tokens=None, seed=42, stop=("</s>",))
    assert parse({**FORM, "max_tokens": "256", "seed": ""}, base).max_tokens == 256
    assert base.max_tokens == 100  # the params given are left as they were


def test_parse_reads_the_thinking_settings():
    thinking = parse({**FORM, "think": "high", "think_budget": "512"}, Params())
    assert (thinking.think, thinking.think_budget) == ("high", 512)
    assert parse({**FORM, "think_budget": "0"}, Params()).think_budget == 0  # no thinking where only a budget can say so
    again = parse(FORM, Params(think="on", think_budget=8))
    assert (again.think, again.think_budget) == (None, None)  # the model's own default, no budget
    with pytest.raises(ValueError, match="^think: 'loud' is not one of model default, on, off, low, medium, high$"):
        parse({**FORM, "think": "loud"}, Params())


def bad_values():
    for name, label, kind, (low, high) in FIELDS:
        values = ["warm", str(kind(high) + 1), str(kind(low) - 1)]
        values += ["2.5"] if kind is int else ["nan", "inf"]
        values += [] if name in OPTIONAL else [""]
        for value in values:
            yield pytest.param(name, value, label.split(" (")[0], id=f"{name}={value!r}")


@pytest.mark.parametrize("name, value, shown", list(bad_values()))
def test_parse_refuses_a_bad_value_naming_the_field(name, value, shown):
    with pytest.raises(ValueError, match=f"^{re.escape(shown)}: "):
        parse({**FORM, name: value}, Params())


def test_settings_change_sampling_and_system_prompt():
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")
        conversation = list(screen.session.messages)
        params = app.params

        async def settings(*keys):
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)
            await pilot.press(*keys)  # the system prompt has the focus; Tab goes on to the temperature

        await settings(*"Be brief.", "tab", *"1.5", "escape")
        assert app.screen is screen and app.params is params and screen.session.params is params
        assert app.system is None and screen.session.messages == conversation

        await settings("tab", *"hot", "ctrl+s")
        form = app.screen
        assert isinstance(form, SettingsScreen) and text(form.query_one("#settings-error", Label)).startswith("temperature")
        await pilot.press("escape")

        await settings("tab", *"1.5", "ctrl+s")  # sampling alone: the conversation goes on
        assert app.screen is screen
        assert app.params == screen.params == screen.session.params == Params(temperature=1.5, max_tokens=8)
        assert app.system is None and screen.session.messages == conversation

        await settings(*"Be brief.", "ctrl+s")  # a new system prompt starts a new chat
        assert app.screen is screen and app.system == screen.system == "Be brief."
        assert screen.session.messages == [{"role": "system", "content": "Be brief."}]
        assert screen.session.params.temperature == 1.5 and not screen.query(".assistant")
        assert "New chat with the new system prompt" in notes(app)

    chat(scenario, ReplayEngine(gap_s=0), SHORT)


def test_settings_set_thinking_and_show_it_again():
    async def scenario(app, screen, pilot):
        await pilot.press("ctrl+s")
        form = app.screen
        assert isinstance(form, SettingsScreen) and form.query_one("#think", Select).value == "model default"
        await pilot.press(*["tab"] * 8)  # past the system prompt and the seven numbers
        assert form.query_one("#think", Select).has_focus
        await pilot.press("enter", "down", "down", "enter")  # model default, on, off
        await pilot.press("tab", *"16", "ctrl+s")
        assert app.screen is screen
        assert app.params == screen.session.params == Params(temperature=0, max_tokens=8, think="off", think_budget=16)

        await pilot.press("ctrl+s")  # the form shows what the chat runs with
        form = app.screen
        assert form.query_one("#think", Select).value == "off" and form.query_one("#think_budget").value == "16"
        await pilot.press("escape")

    chat(scenario, ReplayEngine(gap_s=0), SHORT)


def test_settings_show_the_system_prompt_of_a_reopened_conversation():
    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")  # saved with the pirate prompt
        await pilot.press("ctrl+s", "ctrl+a", "ctrl+k", *"Be a robot.", "ctrl+s")
        assert screen.session.system == "Be a robot."
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await until(pilot, lambda: screen.session.system == "Be a pirate.")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        assert app.screen.query_one("#system").text == "Be a pirate."

    chat(scenario, ReplayEngine(gap_s=0), SHORT, system="Be a pirate.")


# -- prompt ---------------------------------------------------------------------------


def test_prompt_newlines_enter_and_recall():
    async def scenario(app, screen, pilot):
        prompt = screen.query_one(PromptArea)
        await pilot.press(*"Two", "ctrl+j", *"lines")
        assert prompt.value == "Two\nlines" and not screen.asked and not screen.generating
        await pilot.press("enter")
        await until(pilot, lambda: screen.asked and not screen.generating)
        assert prompt.value == "" and screen.asked == ["Two\nlines"]
        assert [m for m in screen.session.messages if m["role"] == "user"] == [{"role": "user", "content": "Two\nlines"}]
        assert [text(w) for w in screen.query(".user")] == ["Two\nlines"]

        await ask_and_wait(screen, pilot, "Hi")
        for key, shown in [("up", "Hi"), ("up", "Two\nlines"), ("down", "Hi"), ("down", "")]:
            await pilot.press(key)
            assert prompt.value == shown, key
        await pilot.press("a", "ctrl+j", "b", "up")  # ↑ below the first line moves the cursor
        assert prompt.value == "a\nb" and prompt.cursor_location[0] == 0

    chat(scenario, ReplayEngine(gap_s=0), SHORT)


class PromptApp(App):
    def compose(self):
        yield PromptArea(id="prompt")


def test_down_keeps_the_prompt_being_typed():
    app = PromptApp()

    async def scenario(pilot):
        prompt = app.query_one(PromptArea)
        prompt.remember("Hi")
        prompt.focus()
        await pilot.press(*"draft", "down")
        assert prompt.value == "draft"
        await pilot.press("up", "down")  # as in a shell: back from the history to the draft
        assert prompt.value == "draft"

    drive(app, scenario)


# -- copy and model switching -----------------------------------------------------------


class Numbered(ReplayEngine):
    """The recorded answer with its number in front: each answer differs from the one before."""

    answers = 0

    def stream(self, messages, params, cancel=None):
        self.answers += 1
        for i, event in enumerate(super().stream(messages, params, cancel)):
            if i == 0 or isinstance(event, Done):  # the first token, and the whole text
                event = dataclasses.replace(event, text=f"{self.answers}. {event.text}")
            yield event


def test_copy_the_last_answer(monkeypatch):
    for name in ("TMUX", "DISPLAY", "WAYLAND_DISPLAY"):  # a plain terminal: OSC 52 only
        monkeypatch.delenv(name, raising=False)

    async def scenario(app, screen, pilot):
        await pilot.press("ctrl+r")
        assert not app.clipboard and "No answer to copy yet" in notes(app)
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        await ask_and_wait(screen, pilot, "Name a colour.")
        first, last = [m["content"] for m in screen.session.messages if m["role"] == "assistant"]
        assert last and first != last and screen.query(".assistant").last().source == last
        await pilot.press("ctrl+r")
        assert app.clipboard == last
        assert any(n.startswith(f"Sent the last answer ({len(last)} characters) to the terminal's clipboard (OSC 52)")
                   for n in notes(app))

    chat(scenario, Numbered(gap_s=0), SHORT)


def test_switching_model_is_refused_while_answering(picked):
    async def scenario(app, screen, pilot):
        await ask(screen, pilot, "Write a very long story about a dragon.")
        assert screen.generating
        await pilot.press("ctrl+l")
        assert picked == [] and app.screen is screen and screen.generating
        assert "Stop the answer first (Esc)" in notes(app)
        await pilot.press("escape")
        await until(pilot, lambda: not screen.generating)
        await pilot.press("ctrl+l")
        assert picked == [app.engine_name]

    chat(scenario, ReplayEngine(pause_after=2, gap_s=0), Params(temperature=0, max_tokens=2000))  # held mid-answer
