"""Saved conversations, to reopen one or export it as Markdown."""

from __future__ import annotations

import os
import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from roost import history, paths


class HistoryScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Back"), Binding("e", "export", "Export")]

    def compose(self) -> ComposeResult:
        saved = [s for s in history.conversations() if s.readable]  # roost history lists the others
        yield Label("Saved conversations (Enter to reopen, E to export as Markdown, Esc to go back)" if saved else
                    "No saved conversations yet (Esc to go back)", id="history-title")
        yield OptionList(*[
            Option(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.updated))}  {s.title}  "
                   f"({s.messages} messages, {s.model})", id=s.path)
            for s in saved
        ], id="history-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_export(self) -> None:
        """The highlighted conversation as Markdown (as roost history export writes it) in
        the current folder, or the data folder's exports/ where that cannot be written."""
        option = self.query_one(OptionList).highlighted_option
        if option is None:
            self.notify("No conversation to export", severity="warning")
            return
        conv = history.Conversation(option.id)
        text = history.markdown(conv)
        for folder in (os.getcwd(), os.path.join(paths.data_dir(), "exports")):
            target = os.path.join(folder, f"roost-{conv.id}.md")
            try:
                os.makedirs(folder, exist_ok=True)
                with open(target, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError:
                continue
            self.notify(f"Exported to {target}", timeout=10)
            return
        self.notify("Could not write the export here or in roost's data folder", severity="error")
