"""Driving roost's Textual app in tests: Pilot (App.run_test) helpers shared by the TUI tests."""

import asyncio
import time

from roost.backends import load
from roost.backends.base import Params, Plan
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen


async def until(pilot, condition, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.05)


def drive(app, scenario, size=(80, 24)):
    """Run scenario(pilot) in the app, headless."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def chat(scenario, model, params=Params(temperature=0, max_tokens=60), system=None, size=(80, 24)):
    """Run scenario(app, chat screen, pilot) once the model is loaded in the chat. model: a
    GGUF file, loaded by llama.cpp, where the answer matters; or an engine, such as a
    ReplayEngine (tests/replay.py), where only what the screen does with an answer does."""
    engine = (lambda: load(model, Plan(n_ctx=2048))) if isinstance(model, str) else (lambda: model)
    app = RoostApp(engine, "SmolLM2", params, system)

    async def main(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        screen = app.screen
        await scenario(app, screen, pilot)
        screen.cancel.set()
        await until(pilot, lambda: not screen.generating)

    drive(app, main, size)


async def ask(screen, pilot, text):
    asked = len(screen.asked)
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: len(screen.asked) > asked)


async def ask_and_wait(screen, pilot, text):
    await ask(screen, pilot, text)
    await until(pilot, lambda: not screen.generating)


def notes(app) -> list[str]:
    """The notifications shown (Textual keeps them on a private attribute)."""
    return [n.message for n in app._notifications]
