"""The model list: what is on disk and in the catalog, each with how it fits this machine;
pick a quant, download it here, with progress that can be cancelled."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, ProgressBar, Static

from roost import report
from roost.machine import fit
from roost.models import listing
from roost.backends.base import Cancel
from roost.errors import RoostError

FIT_STYLE = {"full": "green", "partial": "yellow", "cpu": "yellow", "no": "red"}


def _fit_cell(option, n_layer: int, too_slow: bool = False) -> Text:
    if option is None:
        return Text("no", style="red")
    if too_slow:  # it fits, but is predicted below the floor (fit.MIN_TPS)
        return Text("too slow", style="yellow")
    return Text(report.fits(option, n_layer), style=FIT_STYLE[option.fit])


class ModelScreen(Screen[str | None]):
    """Dismissed with the path of a local model to chat with (a GGUF file, or an MLX
    folder when the engine is MLX), or None (Esc)."""

    BINDINGS = [
        Binding("escape", "back", "Back / cancel download"),
        Binding("down", "focus_models", show=False),
    ]

    class Fetched(Message):
        def __init__(self, progress) -> None:
            super().__init__()
            self.progress = progress

    class Finished(Message):
        def __init__(self, path: str | None, error: RoostError | None) -> None:
            super().__init__()
            self.path, self.error = path, error

    def __init__(self, machine, n_ctx: int, engine: str = "llama"):
        super().__init__()
        self.machine, self.n_ctx, self.engine = machine, n_ctx, engine
        self.offers: dict[str, listing.Offer] = {}
        self.cancel: Cancel | None = None  # set while a download runs

    def compose(self) -> ComposeResult:
        b = fit.budget(self.machine)
        room = f"{report.size(b.gpu_bytes)} of VRAM and " if b.gpu_bytes and not b.unified else ""
        yield Header()
        yield Static(f"Planned for {b.device_name} at {self.n_ctx} tokens of context, with {room}"
                     f"{report.size(b.host_bytes)} of {'memory' if b.unified else 'RAM'} usable", id="budget")
        yield Input(placeholder="type to filter: name, family, kind", id="filter", compact=True, select_on_focus=False)
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Static(id="why")
        yield DataTable(id="quants", cursor_type="row")
        with Horizontal(id="download"):
            yield Label(id="download-what")
            yield ProgressBar(id="download-bar", show_eta=False)
            yield Label(id="download-rate")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        from roost.models import library

        if self.engine == "mlx":
            offers = listing.mlx_offers(self.machine, self.n_ctx)
        else:
            have = library.downloaded()
            offers = listing.local_offers(self.machine, self.n_ctx, have) + listing.catalog_offers(self.machine, self.n_ctx, have)
        self.offers = {o.name: o for o in offers}
        self.query_one("#models", DataTable).add_columns("model", "params", "best here", "fits", "predicted", "on disk")
        self.query_one("#quants", DataTable).add_columns(*report.QUANT_HEADER, "on disk")
        self._fill("")
        self.query_one("#download").display = False
        self.query_one("#filter").focus()

    def _fill(self, text: str) -> None:
        table = self.query_one("#models", DataTable)
        table.clear()
        for o in self.offers.values():
            if o.matches(text.split()):
                # The catalog's older entries come last (listing.py), dimmed: still there for those who have them.
                table.add_row(Text(o.name, style="dim") if o.older else o.name, report.params(o.params) if o.params else "?",
                              o.pick.quant.name if o.pick and not o.too_slow else "—",
                              _fit_cell(o.pick, o.n_layer, o.too_slow), report.predicted(o.pick),
                              "✓" if o.local else "", key=o.name)
        if not table.row_count:
            self.query_one("#why", Static).update(f"nothing matches {text!r}")
            self.query_one("#quants", DataTable).clear()

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#filter")
    def action_focus_models(self) -> None:
        self.query_one("#models").focus()

    def on_key(self, event) -> None:
        # Typing anywhere filters: a letter typed in a table goes to the filter box.
        if isinstance(self.focused, DataTable) and event.is_printable and event.character:
            box = self.query_one("#filter", Input)
            box.focus()
            box.insert_text_at_cursor(event.character)
            event.stop()

    @property
    def offer(self) -> listing.Offer | None:
        table = self.query_one("#models", DataTable)
        if not table.row_count:
            return None
        return self.offers[table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value]

    @on(DataTable.RowHighlighted, "#models")
    def _show_quants(self) -> None:
        o = self.offer
        quants = self.query_one("#quants", DataTable)
        quants.clear()
        if o is None:
            return
        if o.ranking is None:
            self.query_one("#why", Static).update(f"{o.name}: {o.description}")
            return
        for opt in o.ranking.options:
            row = report.quant_row(opt, o.n_layer, opt is o.pick)
            row[3] = _fit_cell(opt, o.n_layer)
            quants.add_row(*row, "✓" if opt.quant.name in o.local else "", key=opt.quant.name)
        if o.pick:
            quants.move_cursor(row=quants.get_row_index(o.pick.quant.name))
        if o.too_slow:
            pick = report.too_slow(o.name, o.ranking)
        elif o.pick:
            pick = f"pick: {o.pick.quant.name} — {o.ranking.reason}"
            if o.pick.low_bits:
                smaller = listing.smaller_at_4_bits(o.family, o.params, list(self.offers.values()))
                pick += "\n" + report.low_bits(o.name, o.pick, smaller)
        else:
            pick = f"nothing to pick: {o.ranking.reason}"
        self.query_one("#why", Static).update(f"{o.description}\n{pick}" if o.description else pick)

    @on(DataTable.RowSelected, "#models")
    def _to_quants(self) -> None:
        self.query_one("#quants").focus()

    @on(DataTable.RowSelected, "#quants")
    def _choose(self, event: DataTable.RowSelected) -> None:
        o, quant = self.offer, event.row_key.value
        if o is None:
            return
        if quant in o.local:
            self.dismiss(o.local[quant])
            return
        option = next(opt for opt in o.ranking.options if opt.quant.name == quant)
        if option.fit == "no":
            self.notify(f"{o.name} {quant} does not fit here: {option.why_not}; pick a smaller quant or model",
                        severity="error", timeout=10)
        elif self.cancel is not None:
            self.notify("a download is running: Esc cancels it", severity="warning")
        else:
            self._download(o, o.file_for(quant))

    def _download(self, offer: listing.Offer, file) -> None:
        self.cancel = Cancel()
        self.query_one("#download-what", Label).update(f"{offer.name} {file.quant} ")
        self.query_one("#download-bar", ProgressBar).update(total=file.size, progress=0)
        self.query_one("#download-rate", Label).update(" starting…")
        self.query_one("#download").display = True
        self.run_worker(lambda: self._fetch(offer, file, self.cancel), thread=True, group="download")

    def _fetch(self, offer: listing.Offer, file, cancel: Cancel) -> None:
        """In a worker thread: the download, its progress posted at most ten times a second."""
        from roost.models import library, mlx_models

        last = 0.0

        def on_progress(p) -> None:
            nonlocal last
            if time.monotonic() - last >= 0.1 or p.done == p.total:
                last = time.monotonic()
                self.post_message(self.Fetched(p))

        try:
            if offer.engine == "mlx":
                path = mlx_models.pull(file.file, on_progress, cancel)
            else:
                path = library.pull(offer.repo_id, file, on_progress, cancel)
            self.post_message(self.Finished(path, None))
        except RoostError as e:
            self.post_message(self.Finished(None, e))

    def on_model_screen_fetched(self, message: Fetched) -> None:
        p = message.progress
        self.query_one("#download-bar", ProgressBar).update(total=p.total, progress=p.done)
        eta = f" · {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        verb = "checking" if p.phase == "verify" else f"{report.size(p.bytes_per_s)}/s"
        self.query_one("#download-rate", Label).update(f" {report.size(p.done)} of {report.size(p.total)} · {verb}{eta}")

    def on_model_screen_finished(self, message: Finished) -> None:
        from roost.models.download import Cancelled

        self.cancel = None
        self.query_one("#download").display = False
        if message.path:
            self.dismiss(message.path)
        elif isinstance(message.error, Cancelled):
            self.notify("download cancelled; the partial file was removed")
        else:
            self.notify(str(message.error), severity="error", timeout=15)

    def action_back(self) -> None:
        if self.cancel is not None:
            self.cancel.set()  # the worker reports back, and the screen stays
        else:
            self.dismiss(None)
