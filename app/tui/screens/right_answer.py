"""The right answer to an answer marked bad, typed by the user (roost eval checks for it)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class RightAnswerScreen(ModalScreen[str | None]):
    """Dismisses with the right answer ("" where none was typed), or None: no mark."""

    DEFAULT_CSS = """
    RightAnswerScreen { align: center middle; }
    RightAnswerScreen > Vertical {
        width: 72;
        max-width: 100%;
        height: auto;
        border: round $primary;
        padding: 0 1;
    }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("The last answer is marked bad. The right answer, or its key words "
                        "(Enter to save; blank: none; Esc: no mark):")
            yield Input(placeholder="the right answer", id="right-answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())
