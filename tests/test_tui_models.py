"""The start and model screens driven by Pilot: recorded machines, the Hub stand-in on
127.0.0.1, a real download, then a real chat on what was downloaded."""

import asyncio
import os

import pytest

from conftest import NAME, ROOT, in_process
from roost.backends.base import Params
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen
from roost.tui.screens.models import ModelScreen
from roost.tui.screens.start import StartScreen
from pilot import ask_and_wait, notes, until


def run_app(scenario, monkeypatch, machine: str, engine: str | None = None):
    """The app on a recorded machine, through the start screen with `engine` chosen by
    the arrow keys (None: the one roost picked for the machine), to the model list."""
    monkeypatch.setenv("ROOST_MACHINE", os.path.join(ROOT, "tests", "machines", machine))
    app = RoostApp(params=Params(temperature=0))  # greedy: the answer checked is the model's best, every run

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StartScreen))
            engines = app.screen.query_one("#engines")
            for key in ("up", "down", "down"):
                if engine is None or engines.get_option_at_index(engines.highlighted).id == engine:
                    break
                await pilot.press(key)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ModelScreen))
            await scenario(app, pilot)

    asyncio.run(main())


def rows(screen, table="#models") -> dict[str, list[str]]:
    t = screen.query_one(table)
    return {key.value: [str(c) for c in t.get_row(key)] for key in t.rows}


def downloaded_files(home) -> list[str]:
    return [f for _, _, files in os.walk(home) for f in files if f.endswith((".gguf", ".incomplete"))]


async def choose(pilot, text: str):
    """Filter to a model and Enter twice: the model, then its quant (the planner's pick)."""
    await pilot.press(*text, "enter", "enter")
    await pilot.pause()
    await pilot.press("enter")


async def download_stalling(hub, pilot, after: int) -> str:
    """Start downloading the demo's catalog twin; the connection stalls once `after`
    bytes are through (then drops), so the screen can be seen mid-download."""
    offer = pilot.app.screen.offers[NAME]
    filename = offer.file_for(offer.pick.quant.name).file
    reached = hub.stall_after(filename, after, seconds=1.0)
    await choose(pilot, NAME)
    assert await asyncio.to_thread(reached.wait, 60)
    return filename


async def chat_answers_tokyo(app, pilot) -> ChatScreen:
    """Once the chosen model is loaded in the chat, it answers a question there."""
    await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None, timeout=180)
    chat = app.screen
    await ask_and_wait(chat, pilot, "What is the capital of Japan?")
    assert "Tokyo" in chat.query(".assistant").last().source
    chat.cancel.set()
    return chat


def test_list_filters_and_refuses_what_does_not_fit(hub, home, monkeypatch):
    in_process(hub, home, monkeypatch)

    async def scenario(app, pilot):
        screen = app.screen
        shown = rows(screen)
        assert list(shown)[0] == "demo" and shown["demo"][-1] == "✓"  # on disk, nothing to download
        assert NAME in shown and shown[NAME][-1] == ""
        await pilot.press(*"qwen2.5-3")
        assert set(rows(screen)) == {"qwen2.5-3b", "qwen2.5-32b"}
        # 8 GB of unified memory: no quant of a 32B model fits, and the list says why.
        big = screen.offers["qwen2.5-32b"]
        assert big.pick is None and rows(screen)["qwen2.5-32b"][3] == "no"
        await pilot.press("2", "enter", "enter")
        assert rows(screen, "#quants")  # every quant, each with its verdict
        await pilot.press("enter")
        await until(pilot, lambda: "does not fit" in " ".join(notes(app)))
        assert app.screen is screen and not [r for r in hub.requests if r[1].endswith(".gguf")]
        await pilot.press("z", "z", "z")  # typing in a table goes to the filter
        assert screen.query_one("#filter").value == "qwen2.5-32zzz" and not rows(screen)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, StartScreen))

    run_app(scenario, monkeypatch, "m1_8gb.json", engine="llama")


@pytest.mark.slow
def test_mlx_lists_mlx_builds_downloads_one_and_chats(hub, home, monkeypatch, mlx_repo):
    """On Apple Silicon MLX is picked for the app; its list holds the catalog's MLX
    builds, and a chosen build is fetched from the Hub and answers (here, on MLX's CPU build)."""
    in_process(hub, home, monkeypatch)

    async def scenario(app, pilot):
        screen = app.screen
        assert screen.engine == "mlx" and NAME in rows(screen) and "demo" not in rows(screen)
        await choose(pilot, NAME)
        assert (await chat_answers_tokyo(app, pilot)).engine_info.engine == "mlx"

    run_app(scenario, monkeypatch, "m3max64.json")


@pytest.mark.slow
def test_download_shows_progress_then_opens_the_chat(hub, home, monkeypatch):
    in_process(hub, home, monkeypatch)

    async def scenario(app, pilot):
        screen = app.screen
        filename = await download_stalling(hub, pilot, 8 * 1024**2)  # the download goes on after the drop
        await until(pilot, lambda: "MiB of" in str(screen.query_one("#download-rate").render()))
        assert screen.query_one("#download").display
        await chat_answers_tokyo(app, pilot)
        assert downloaded_files(home) == [filename]

    run_app(scenario, monkeypatch, "cpu_only.json")


def test_escape_cancels_a_download_and_keeps_nothing(hub, home, monkeypatch):
    in_process(hub, home, monkeypatch)

    async def scenario(app, pilot):
        screen = app.screen
        await download_stalling(hub, pilot, 4 * 1024**2)
        await pilot.press("escape")
        await until(pilot, lambda: "cancelled" in " ".join(notes(app)))
        assert app.screen is screen and not screen.query_one("#download").display
        assert downloaded_files(home) == []
        await pilot.press("escape")  # nothing running now: Esc leaves the list
        await until(pilot, lambda: isinstance(app.screen, StartScreen))

    run_app(scenario, monkeypatch, "cpu_only.json")


def test_list_shows_predicted_speed_and_passes_over_what_is_too_slow(hub, home, monkeypatch):
    """On the 38 GB/s CPU box: each model's predicted tok/s; one that fits but is predicted
    below the floor is not offered as best here, and its line says why."""
    in_process(hub, home, monkeypatch)

    async def scenario(app, pilot):
        screen = app.screen
        shown = rows(screen)
        slow = [o for o in screen.offers.values() if o.too_slow]
        fast = [o for o in screen.offers.values() if o.pick and not o.too_slow and o.pick.predicted_tps]
        assert slow and fast
        for o in fast:
            assert shown[o.name][2] == o.pick.quant.name and shown[o.name][4].startswith("~")
        o = slow[0]
        assert shown[o.name][2] == "—" and shown[o.name][3] == "too slow" and shown[o.name][4].endswith("tok/s")
        await pilot.press(*o.name, "enter")
        await pilot.pause()
        why = str(screen.query_one("#why").render())
        assert f"{o.name} {o.pick.quant.name}: fits, ~" in why and "too slow here (floor 10" in why
        assert "predicted" in [str(c.label) for c in screen.query_one("#quants").columns.values()]

    run_app(scenario, monkeypatch, "cpu_only.json")
