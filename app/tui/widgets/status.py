"""The live status under the conversation: speed, first-token time (and the answer's, after
a thought), context, memory."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Sparkline, Static

from roost.report import reading, size


class StatusBar(Horizontal):
    def compose(self) -> ComposeResult:
        yield Static("loading…", id="speed")
        yield ProgressBar(total=1, show_eta=False, show_percentage=False, id="context")
        yield Static("", id="context-label")
        yield Static("", id="memory")
        yield Sparkline([], id="rate")

    def show_speed(self, decode_tps: float, prefill_tps: float | None, ttft_s: float, note: str = "",
                   answer_ttft_s: float | None = None, thinking: bool = False) -> None:
        """answer_ttft_s: when the answer came after a thought, its own first token's time
        (the first token's is the thought's); thinking: no answer yet, the model is thinking."""
        # One token has no rate yet: a dash, not a zero that reads as a stall.
        gen = f"{decode_tps:,.1f}" if decode_tps else "–"
        prefill = f" · prompt {prefill_tps:,.0f} tok/s" if prefill_tps else ""
        if answer_ttft_s is None and not thinking:
            self.query_one("#speed", Static).update(f"gen {gen} tok/s{prefill} · TTFT {ttft_s:.2f} s{note}")
            return
        # After a thought the two first-token times go together, before the prompt's rate:
        # at 80 columns what comes last is cut off.
        answer = f"answer {answer_ttft_s:.1f} s" if answer_ttft_s is not None else "thinking"
        self.query_one("#speed", Static).update(f"gen {gen} tok/s · TTFT {ttft_s:.2f} s · {answer}{prefill}{note}")

    def show_progress(self, progress) -> None:
        """A long prompt being read, before its first token (a Progress)."""
        self.query_one("#speed", Static).update(reading(progress))

    def show_rates(self, rates: list[float]) -> None:
        self.query_one("#rate", Sparkline).data = rates[-40:]

    def show_context(self, used: int, n_ctx: int) -> None:
        # A server that does not say its context (n_ctx 0) gets a bar that cannot fill.
        self.query_one("#context", ProgressBar).update(total=n_ctx or None, progress=used)
        label = f"ctx {used}/{n_ctx or '?'}"
        if n_ctx and used >= 0.85 * n_ctx:  # a warning colour: the next turns will leave the oldest out
            label = f"[$warning bold]{label}[/]"
        self.query_one("#context-label", Static).update(label)

    def show_memory(self, reading, free, gpus=()) -> None:
        """The engine's process (RSS, its own buffers, its VRAM), then what is free here:
        RAM or unified memory, and each GPU's VRAM. A server's reading is named by its
        address, and this machine's free memory is left out: it is not what runs the model.
        gpus: NVIDIA GPUs' readings (machine/gpus.py), first: the check that the GPU works."""
        engine = f" · engine {size(sum(reading.buffers.values()))}" if reading.buffers else ""
        # On a Mac the GPU's memory is the unified memory shown as free below: not VRAM.
        gpu = "Metal" if free is not None and free.unified else "VRAM"
        vram = f" · {gpu} {size(reading.device_used_bytes)}" if reading.device_used_bytes else ""
        rss = f"RSS {size(reading.rss_bytes)}" if reading.rss_bytes is not None else "memory n/a"
        if reading.app_rss_bytes is not None:  # the engine in a process of its own: the app's apart
            rss += f" + app {size(reading.app_rss_bytes)}"
        where = f"{reading.host}: " if reading.host else ""
        where += "".join(f"{_gpu(g, len(gpus) > 1)} · " for g in gpus)
        here = ""
        if free is not None:
            ram = "unified" if free.unified else "RAM"
            gpus = "".join(f" · GPU{i} {size(f)}/{size(t)}" for i, (f, t) in enumerate(free.gpus))
            here = f" · free: {ram} {size(free.ram_available_bytes)}/{size(free.ram_total_bytes)}{gpus}"
        self.query_one("#memory", Static).update(f"{where}{rss}{engine}{vram}{here}")

    def show_text(self, text: str) -> None:
        self.query_one("#speed", Static).update(text)


def _gpu(reading, numbered: bool) -> str:
    """"GPU 87% 215W 64°C", what the driver says of it; GPU0, GPU1 where there are more."""
    said = [f"{reading.utilization_pct:.0f}%" if reading.utilization_pct is not None else "",
            f"{reading.power_w:.0f}W" if reading.power_w is not None else "",
            f"{reading.temperature_c:.0f}°C" if reading.temperature_c is not None else ""]
    return " ".join([f"GPU{reading.index}" if numbered else "GPU", *filter(None, said)])
