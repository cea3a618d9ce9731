"""Saved conversations, to reopen one."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from roost import history


class HistoryScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Back")]

    def compose(self) -> ComposeResult:
        saved = history.conversations()
        yield Label("Saved conversations (Enter to reopen, Esc to go back)" if saved else
                    "No saved conversations yet (Esc to go back)", id="history-title")
        yield OptionList(*[
            Option(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.updated))}  {s.title}  "
                   f"({s.messages} messages, {s.model})", id=s.path)
            for s in saved
        ], id="history-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
