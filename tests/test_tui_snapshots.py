"""Pictures of the start, model and chat screens at 80×24 and 120×40, compared with the
accepted ones in __snapshots__/ (pytest-textual-snapshot). Hardware comes from recorded
machines; the chat is a recorded SmolLM2 answer, replayed (tests/replay.py).

After a deliberate change to a screen: .venv/bin/python -m pytest tests/test_tui_snapshots.py
--snapshot-update, then look at the new SVGs before committing them."""

import os

import pytest

from conftest import ROOT, in_process
from replay import QUESTION, THINKING, THINKING_QUESTION, ReplayEngine
from roost.machine import hardware
from roost.backends.base import Params
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen
from roost.tui.screens.models import ModelScreen
from roost.tui.widgets.prompt import PromptArea
from pilot import until

SIZES = pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])


@pytest.fixture
def machine(monkeypatch):
    def use(name: str):
        monkeypatch.setenv("ROOST_MACHINE", os.path.join(ROOT, "tests", "machines", name))
    return use


@SIZES
def test_start_screen(snap_compare, machine, size):
    machine("rtx4090.json")  # a GPU this CPU-only llama.cpp build cannot use: the advice says how
    assert snap_compare(RoostApp(), terminal_size=size)


@SIZES
def test_model_screen(snap_compare, machine, hub, home, monkeypatch, size):
    in_process(hub, home, monkeypatch)  # an empty model cache
    machine("rtx4090.json")

    async def open_models(pilot):
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ModelScreen))
        await pilot.press(*"qwen", "enter")  # the table, on its first row

    # Planned for the recorded GPU, as a CUDA build would: full, partial and no fits.
    assert snap_compare(RoostApp(machine=hardware.detect()), terminal_size=size, run_before=open_models)


@SIZES
def test_chat_screen_mid_answer(snap_compare, machine, size):
    machine("cpu_only.json")  # the free memory shown
    engine = ReplayEngine(pause_after=8)
    app = RoostApp(lambda: engine, "SmolLM2-135M-Instruct", Params(temperature=0))

    async def ask(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        await pilot.press(*QUESTION, "enter")
        await until(pilot, engine.paused.is_set)
        # The prompt's cursor blinks: caught on or off, the picture would differ by chance.
        app.screen.query_one(PromptArea).cursor_blink = False
        await pilot.pause(0.3)

    try:
        assert snap_compare(app, terminal_size=size, run_before=ask)
    finally:
        engine.resume.set()


@SIZES
def test_chat_screen_after_a_thought(snap_compare, machine, size):
    """A reasoning model's answer: its thought folded to one line above it, and the
    answer's first-token time beside the thought's in the status bar."""
    machine("cpu_only.json")
    engine = ReplayEngine(THINKING)
    app = RoostApp(lambda: engine, "SmolLM2-think", Params(temperature=0, think_budget=16))

    async def ask(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        await pilot.press(*THINKING_QUESTION, "enter")
        await until(pilot, lambda: app.screen.session.stats)
        await until(pilot, lambda: not app.screen.generating)
        app.screen.query_one(PromptArea).cursor_blink = False
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=ask)
