"""roost's Textual app: small on purpose; the screens hold the behaviour.

With a model named, it opens the chat on it; without one, it starts at the machine and
engine, then the model list, then the chat, and Ctrl+L in the chat goes back to pick
another model (Esc there returns to the chat).
"""

from __future__ import annotations

from typing import Callable

from textual.app import App
from textual.binding import Binding

from roost.backends.base import Engine, Params
from roost.errors import RoostError
from roost.models.loading import DEFAULT_CTX
from roost.tui.screens.chat import ChatScreen


class RoostApp(App):
    CSS_PATH = "roost.tcss"
    TITLE = "roost"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, load_engine: Callable[[], Engine] | None = None, model_name: str = "",
                 params: Params = Params(), system: str | None = None, machine=None, load_options: dict | None = None):
        super().__init__()
        self.load_engine, self.model_name = load_engine, model_name
        self.params, self.system = params, system
        self.machine = machine
        self.load_options = load_options or {}  # ctx, gpu_layers, threads: as `roost chat` was given them
        self.engine_name = "llama"
        self.sub_title = model_name

    def on_mount(self) -> None:
        if self.load_engine is not None:
            self.push_screen(ChatScreen(self.load_engine, self.params, self.system, self.model_name))
            return
        from roost.machine import doctor
        from roost.tui.screens.start import StartScreen

        # Shown: every device, a GPU this llama.cpp build cannot use too (with the fix).
        machine, cuda_toolkit = doctor.here()
        llama, mlx, _, advice = doctor.findings(machine, cuda_toolkit)
        self.push_screen(StartScreen(machine, [llama, mlx], advice))

    @property
    def here(self):
        """This machine as the planner sees it (no GPU for a CPU-only build), detected once."""
        if self.machine is None:
            from roost.machine import hardware
            from roost.models import loading

            # the model list shows each model's ceiling: measured here once, if never before
            self.machine = hardware.detect(gpus=loading.can_offload(), measure=True)
        return self.machine

    def pick_model(self, engine: str) -> None:
        from roost.tui.screens.models import ModelScreen

        self.engine_name = engine
        self.push_screen(ModelScreen(self.here, self.load_options.get("ctx") or DEFAULT_CTX, engine), self.open_chat)

    def open_chat(self, path: str | None) -> None:
        """Plan the chosen file before loading it: a model too big for this machine is
        refused here, with what would fit, and the model list stays open."""
        if not path:
            return
        from roost.models import loading
        from roost.backends import load

        try:
            model = loading.prepare(path, engine=self.engine_name, machine=self.here, **self.load_options)
        except RoostError as e:
            self.notify(str(e), severity="error", timeout=15)
            self.pick_model(self.engine_name)
            return
        self.model_name = self.sub_title = model.name
        chat = ChatScreen(lambda: load(model.path, model.plan, engine=model.engine, isolated=True), self.params,
                          self.system, model.name)
        if isinstance(self.screen, ChatScreen):  # picked from a chat: the new one replaces it
            self.switch_screen(chat)
        else:
            self.push_screen(chat)
