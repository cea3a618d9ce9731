"""The prompt: several lines when needed, Enter to send, and earlier questions on ↑/↓."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

# Enter sends. A new line is Ctrl+J, which every terminal and tmux pass through
# (Shift+Enter too where the terminal reports it); pasted text keeps its lines.
NEWLINE_KEYS = ("ctrl+j", "shift+enter")


class PromptArea(TextArea):
    class Submitted(Message):
        def __init__(self, prompt: "PromptArea", value: str) -> None:
            super().__init__()
            self.prompt, self.value = prompt, value

    def __init__(self, placeholder: str = "", id: str | None = None, disabled: bool = False):
        super().__init__(placeholder=placeholder, id=id, disabled=disabled, soft_wrap=True,
                         show_line_numbers=False, tab_behavior="focus", compact=True)
        self.asked: list[str] = []
        self._recall_at = 0
        self._draft = ""  # what was being typed before ↑ went back through the questions

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
        elif event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
        else:
            await super()._on_key(event)

    def remember(self, question: str) -> None:
        self.asked.append(question)
        self._recall_at = len(self.asked)
        self._draft = ""

    # ↑ on the first line and ↓ on the last walk through earlier questions, as in a shell;
    # elsewhere they move the cursor within the text.
    def action_cursor_up(self, select: bool = False) -> None:
        if select or not self.cursor_at_first_line or not self.asked:
            super().action_cursor_up(select)
        else:
            self._recall(-1)

    def action_cursor_down(self, select: bool = False) -> None:
        if select or not self.cursor_at_last_line or self._recall_at >= len(self.asked):
            super().action_cursor_down(select)
        else:
            self._recall(1)

    def _recall(self, step: int) -> None:
        if self._recall_at == len(self.asked):
            self._draft = self.text
        self._recall_at = max(0, min(len(self.asked), self._recall_at + step))
        self.value = self.asked[self._recall_at] if self._recall_at < len(self.asked) else self._draft
