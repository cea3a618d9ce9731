"""The first screen: what this machine has, and which engine will run the model."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, OptionList, Static
from textual.widgets.option_list import Option

from roost import report
from roost.machine.doctor import EngineStatus
from roost.machine.hardware import Machine

BACKEND_OF = {"llama.cpp": "llama", "mlx": "mlx"}  # doctor's engine names → roost.backends names


def auto_engine(engines: list[EngineStatus]) -> str:
    """MLX where it runs on the GPU (it is the faster engine on Apple Silicon), else llama.cpp."""
    usable = [BACKEND_OF[e.name] for e in engines if e.available and e.gpu_offload]
    return "mlx" if "mlx" in usable else "llama"


class StartScreen(Screen):
    """Enter on an engine goes on to the model list with it."""

    BINDINGS = [Binding("enter", "choose", "Choose a model", priority=True)]

    def __init__(self, machine: Machine, engines: list[EngineStatus], advice: list[str]):
        super().__init__()
        self.machine, self.engines, self.advice = machine, engines, advice

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="start"):
            yield Label("This machine", classes="heading")
            yield Static("\n".join(report.machine(self.machine)), id="machine")
            yield Label("Engine: ↑/↓ to change, Enter to choose a model", classes="heading")
            yield OptionList(*[
                Option(f"{e.name}: {e.detail}" + ("" if e.available else " (not available here)"),
                       id=BACKEND_OF[e.name], disabled=not e.available)
                for e in self.engines
            ], id="engines")
            if self.advice:
                yield Label("Advice", classes="heading")
                yield Static("\n".join(f"• {a}" for a in self.advice), id="advice")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        engines = self.query_one(OptionList)
        engines.highlighted = engines.get_option_index(auto_engine(self.engines))
        engines.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.app.pick_model(event.option.id)

    def action_choose(self) -> None:
        self.query_one(OptionList).action_select()
