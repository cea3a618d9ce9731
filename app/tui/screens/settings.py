"""The system prompt, sampling and a reasoning model's thinking, edited in place."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Select, TextArea

from roost import sampling
from roost.backends.base import Params
from roost.backends.reasoning import THINK_SETTINGS

# (Params field, label, type, allowed range): sampling's settings, with the bounds the
# command line and the API take; then max_tokens, seed and the thinking budget, which may
# be left blank (a budget is 0 or more, as --think-budget takes it, up to max tokens' bound).
FIELDS = tuple((s.name, s.label, s.kind, (s.low, s.high)) for s in sampling.SETTINGS) + (
    ("max_tokens", "max tokens (blank = no limit)", int, (1, 1_000_000)),
    ("seed", "seed (blank = random)", int, (0, 2**32 - 1)),
    ("think_budget", "think budget (blank = none)", int, (0, 1_000_000)),
)
OPTIONAL = {"max_tokens", "seed", "think_budget"}
# --think's choices, and the model's own default (Params.think None), which comes first.
MODEL_DEFAULT = "model default"
THINK_CHOICES = (MODEL_DEFAULT, *THINK_SETTINGS)


def parse(values: dict[str, str], params: Params) -> Params:
    """Params from the form's text (and "think", one of THINK_CHOICES), or ValueError
    naming the field that is wrong."""
    think = values.get("think", MODEL_DEFAULT)
    if think not in THINK_CHOICES:
        raise ValueError(f"think: {think!r} is not one of {', '.join(THINK_CHOICES)}")
    changes = {"think": None if think == MODEL_DEFAULT else think}
    for name, label, kind, (low, high) in FIELDS:
        text = values[name].strip()
        if not text and name in OPTIONAL:
            changes[name] = None
            continue
        try:
            changes[name] = sampling.read(text, kind, low, high)
        except ValueError as e:
            raise ValueError(f"{label.split(' (')[0]}: {e}") from None
    return replace(params, **changes)


class SettingsScreen(ModalScreen[tuple[str | None, Params] | None]):
    """Dismisses with (system prompt, params), or None when left unchanged."""

    BINDINGS = [Binding("ctrl+s", "save", "Save", priority=True), Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, system: str | None, params: Params):
        super().__init__()
        self.system, self.params = system, params

    def compose(self) -> ComposeResult:
        with Vertical(id="settings"):
            yield Label("System prompt (a change starts a new chat)")
            yield TextArea(self.system or "", id="system", soft_wrap=True, tab_behavior="focus", compact=True)
            with Grid(id="sampling"):
                for name, label, _, _ in FIELDS:
                    if name == "think_budget":  # the thinking settings together
                        yield Label("think (reasoning models)")
                        yield Select([(c, c) for c in THINK_CHOICES], value=self.params.think or MODEL_DEFAULT,
                                     allow_blank=False, id="think", compact=True)
                    value = getattr(self.params, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=name, compact=True)
            yield Label("Ctrl+S to save, Esc to cancel, Tab to move", id="settings-error")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#system", TextArea).focus()

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        try:
            values = {name: self.query_one(f"#{name}", Input).value for name, *_ in FIELDS}
            params = parse({**values, "think": self.query_one("#think", Select).value}, self.params)
        except ValueError as e:
            error = self.query_one("#settings-error", Label)
            error.update(str(e))
            error.add_class("error")
            return
        self.dismiss((self.query_one("#system", TextArea).text.strip() or None, params))
