"""roost's Textual app: small on purpose; the screens hold the behaviour."""

from __future__ import annotations

from typing import Callable

from textual.app import App
from textual.binding import Binding

from roost.backends.base import Engine, Params
from roost.tui.screens.chat import ChatScreen


class RoostApp(App):
    CSS_PATH = "roost.tcss"
    TITLE = "roost"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, load_engine: Callable[[], Engine], model_name: str, params: Params = Params(),
                 system: str | None = None):
        super().__init__()
        self.load_engine, self.model_name = load_engine, model_name
        self.params, self.system = params, system
        self.sub_title = model_name

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.load_engine, self.params, self.system, self.model_name))
