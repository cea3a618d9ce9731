"""The chat screen: the conversation, the prompt, and the live status.

The engine runs in a worker thread and the screen only renders what the session's
events carry: text is appended in batches (at most every BATCH_S), so drawing never
slows decoding, and every speed shown is the engine's own. A reasoning model's thought
goes in its own block above the answer (widgets/thought.py), told apart by the engine.
A conversation longer than the context goes on without its oldest turns (the session
leaves them out, context_policy.py): a dim line above the first turn the model still sees
says how many are out of its view, and what context memory would allow here.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Markdown, Static

from roost import history
from roost.backends import chat_template
from roost.backends.base import REASONING, Cancel, Done, Engine, EngineInfo, Params, Progress, Token
from roost.errors import ConnectionLost, EngineCrashed, RoostError
from roost.session import Session
from roost.tui.screens.history import HistoryScreen
from roost.tui.screens.right_answer import RightAnswerScreen
from roost.tui.screens.settings import SettingsScreen
from roost.tui.widgets.prompt import PromptArea
from roost.tui.widgets.status import StatusBar
from roost.tui.widgets.thought import Thought

BATCH_S = 0.1  # at most ten redraws a second while an answer streams


class Turn(NamedTuple):
    """What one answer fills on screen: the thought, if any, above the answer."""

    thought: Thought
    answer: Markdown


_MARKS = Binding.Group("Good/Bad", compact=True)  # one footer entry, "^g^f Good/Bad": the footer has little room


class ChatScreen(Screen):
    DEFAULT_CSS = """
    ChatScreen .out-of-view {
        margin: 1 0 0 0;
        padding: 0 1;
        color: $text-muted;
    }
    """
    BINDINGS = [
        # The app's Quit, first here: the footer cuts what does not fit at its right end,
        # and at 80 columns (tmux over SSH) that had been Quit.
        Binding("ctrl+q", "app.quit", "Quit"),
        Binding("escape", "stop", "Stop"),  # shown while an answer runs (check_action)
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+o", "open_history", "History"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+r", "copy_answer", "Copy"),
        Binding("ctrl+l", "models", "Model"),
        # Shown only where there is a thought (check_action): the footer of a model that
        # does not reason stays as it was.
        Binding("ctrl+t", "toggle_thoughts", "Thought"),
        # Shown only once a server's connection is lost (check_action): it connects anew,
        # for --ssh the whole setup (app/ssh.py), and the conversation goes on.
        Binding("f5", "reconnect", "Reconnect"),
        # Marks for roost eval --from-history: keys no text field takes (Ctrl+B is tmux's);
        # shown once there is an answer to mark (check_action), last, as the footer has little room.
        Binding("ctrl+g", "mark(True)", "Good", group=_MARKS),
        Binding("ctrl+f", "mark(False)", "Bad", group=_MARKS),
    ]

    def __init__(self, load_engine: Callable[[], Engine], params: Params, system: str | None, model_name: str = ""):
        super().__init__()
        self.load_engine, self.params, self.system, self.model_name = load_engine, params, system, model_name
        self.engine: Engine | None = None
        self.engine_info: EngineInfo | None = None
        self.session: Session | None = None
        self.cancel = Cancel()
        self.generating = False
        self.rates: list[float] = []
        self.answer_ttft_s: float | None = None  # this answer's, once it started after a thought
        self.prefill_tps: float | None = None  # the prompt's rate, known before its answer where it was read in chunks
        self.crash: EngineCrashed | None = None  # the engine's process died: the next question loads it again
        self.lost: ConnectionLost | None = None  # a server's connection broke: F5 connects again
        self.out_of_view: Static | None = None  # the line above the first turn the model still sees
        # The context memory allows this model here, planned at the first turn left out (0: none larger)
        self.larger_ctx: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield VerticalScroll(id="conversation")
        yield StatusBar(id="status")
        yield PromptArea(placeholder="Loading the model…", id="prompt", disabled=True)
        yield Footer(compact=True, show_command_palette=False)  # ^p still opens it: the room is for roost's keys

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="load")
    def load(self) -> None:
        try:
            engine = self.load_engine()
        except EngineCrashed as e:
            self.app.call_from_thread(self._crashed, None, e)
            return
        except Exception as e:  # shown where the user looks, not as a traceback
            self.app.call_from_thread(self.query_one(StatusBar).show_text, f"could not load the model: {e}")
            return
        self.app.call_from_thread(self._loaded, engine)

    def _loaded(self, engine: Engine, again: bool = False) -> None:
        """The model is loaded: at the start, or again after its process crashed (the
        conversation goes on, its history prefilled anew)."""
        first = self.engine_info is None
        old, self.engine, self.crash, self.lost = self.engine, engine, None, None
        if old is not None and old is not engine:
            old.close()
        if self.session is None:
            self.session = Session(engine, self.params, system=self.system)
        self.session.engine = engine
        prompt = self.query_one(PromptArea)
        prompt.disabled = False
        prompt.placeholder = "Ask something (Enter to send, Ctrl+J for a new line, Esc to stop)"
        prompt.focus()
        self.engine_info = info = engine.info()  # fixed once loaded; read on every redraw
        status = self.query_one(StatusBar)
        status.show_text(f"{info.engine} on {info.device} · {'loaded again after the crash' if again else 'ready'}")
        if again:
            self.notify("The engine crashed before: the model was loaded again")
        else:
            status.show_context(0, info.n_ctx)
        if first and (missing := chat_template.missing_note(info.chat_template, self.model_name or info.model)):
            # Long enough to read: the first answer would otherwise be the only sign.
            self.notify(missing, severity="warning", timeout=15)
        self._show_memory()
        if first:
            self.set_interval(1.0, self._show_memory)
        self.refresh_bindings()  # Ctrl+T, for a model that reasons; F5 gone once connected again

    def _crashed(self, engine: Engine | None, error: EngineCrashed) -> None:
        """The engine's process died (at load, mid-answer, or idle): one line in the status
        bar; the conversation stays, and the next question loads the model again."""
        if engine is not self.engine:  # an old engine's news, after a reload
            return
        self.crash = error
        self.query_one(StatusBar).show_text(f"{error}; your next question loads the model again")
        prompt = self.query_one(PromptArea)
        prompt.disabled = False
        prompt.placeholder = "Ask again: the model loads anew"
        prompt.focus()

    def _show_memory(self) -> None:
        if self.engine is not None and self.crash is None:
            self._read_memory(self.engine)

    @work(thread=True, exclusive=True, group="memory")
    def _read_memory(self, engine: Engine) -> None:
        """Off the event loop: a remote engine's reading is an HTTP request."""
        from roost.machine import gpus as machine_gpus, hardware

        try:
            reading = engine.memory()
        except EngineCrashed as e:  # found dead between answers (the out-of-memory killer, say)
            self.app.call_from_thread(self._crashed, engine, e)
            return
        if reading.host:  # this machine's memory is beside the point; the GPU's as its /metrics said
            free, working = None, engine.gpus
        else:  # NVML, asked once (17 ms), and only where the model is on an NVIDIA GPU
            probe = hardware.default_probe()
            nvidia = probe.nvidia() if self.engine_info.device == "CUDA" else []
            free, working = hardware.free_memory(probe, nvidia), machine_gpus.of(nvidia)
        self.app.call_from_thread(self.query_one(StatusBar).show_memory, reading, free, working)

    # -- asking ---------------------------------------------------------------------

    @property
    def asked(self) -> list[str]:
        return self.query_one(PromptArea).asked

    def on_prompt_area_submitted(self, event: PromptArea.Submitted) -> None:
        text = event.value.strip()
        if not text or self.generating or (self.session is None and self.crash is None):
            return
        event.prompt.value = ""
        if self.session is None:  # the engine crashed as it loaded: this question loads it again
            self.session = Session(self.engine, self.params, system=self.system)
        if self.session.saved is None:  # a conversation is saved from its first question on
            self.session.saved = history.Conversation.create(self.model_name, self.system, self.params)
        event.prompt.remember(text)
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.mount(Static(text, classes="user"))
        thought, answer = Thought(), Markdown("", classes="assistant")
        conversation.mount(thought, answer)
        conversation.scroll_end(animate=False)
        self.generating = True
        self.refresh_bindings()  # no marks while an answer streams
        self.cancel = Cancel()
        self.rates = []
        self.answer_ttft_s = None
        self.prefill_tps = None
        self.generate(text, Turn(thought, answer), reload=self.crash is not None)

    class Arrived(Message):
        """Tokens for the turn on screen, all thought or all answer, with the engine's
        clock at the last one."""

        def __init__(self, turn: Turn, text: str, token: Token) -> None:
            super().__init__()
            self.turn, self.text, self.token = turn, text, token

    class Reading(Message):
        """A long prompt being read: how far."""

        def __init__(self, progress: Progress) -> None:
            super().__init__()
            self.progress = progress

    class Finished(Message):
        def __init__(self, turn: Turn, done: Done | None, error: Exception | None = None) -> None:
            super().__init__()
            self.turn, self.done, self.error = turn, done, error

    @work(thread=True, exclusive=True, group="generate")
    def generate(self, text: str, turn: Turn, reload: bool = False) -> None:
        # post_message hands over and returns at once: the engine never waits for drawing
        # (call_from_thread would block this thread until the screen had redrawn).
        pending, last_flush, last = [], 0.0, None  # the first token is drawn at once
        try:
            if reload:
                self.app.call_from_thread(self.query_one(StatusBar).show_text,
                                          "the engine crashed before: loading the model again…")
                self.app.call_from_thread(self._loaded, self.load_engine(), True)
            for event in self.session.send(text, self.cancel):
                if isinstance(event, Token):
                    if pending and event.kind != last.kind:
                        # The thought's last batch; the answer's first token is drawn at
                        # once, alone, so that the thought folds with that token's counts.
                        self.post_message(self.Arrived(turn, "".join(pending), last))
                        pending, last_flush = [], 0.0
                    pending.append(event.text)
                    last = event
                    if time.perf_counter() - last_flush >= BATCH_S:
                        self.post_message(self.Arrived(turn, "".join(pending), last))
                        pending, last_flush = [], time.perf_counter()
                elif isinstance(event, Progress):
                    self.post_message(self.Reading(event))
                elif isinstance(event, Done):
                    if pending:
                        self.post_message(self.Arrived(turn, "".join(pending), last))
                    self.post_message(self.Finished(turn, event))
        except Exception as e:
            if pending:  # what came before it stays on screen
                self.post_message(self.Arrived(turn, "".join(pending), last))
            self.post_message(self.Finished(turn, None, e))

    def on_chat_screen_reading(self, message: Reading) -> None:
        # The last one comes at the first token, its rate the prompt's: shown with the answer's.
        self.prefill_tps = message.progress.tps
        self.query_one(StatusBar).show_progress(message.progress)

    async def on_chat_screen_arrived(self, message: Arrived) -> None:
        # The status first: appending yields to the event loop, and a frame drawn then
        # should not show the new text beside the old numbers.
        token, thought = message.token, message.turn.thought
        if token.kind != REASONING and thought.text and not thought.over:
            # The answer starts: the thought folds, with its time and tokens as the engine
            # counted them at this token (Done's stats make them exact once it is over).
            self.answer_ttft_s = token.ttft_s + token.decode_s
            thought.end(token.decode_s, token.generated - 1, folded=True)
            self.refresh_bindings()
        status = self.query_one(StatusBar)
        if token.decode_tps:
            self.rates.append(token.decode_tps)
            status.show_rates(self.rates)
        status.show_speed(token.decode_tps, self.prefill_tps, token.ttft_s,
                          answer_ttft_s=self.answer_ttft_s, thinking=token.kind == REASONING)
        status.show_context(token.prompt_tokens + token.generated, self.engine_info.n_ctx)
        if token.kind == REASONING:
            thought.append(message.text)
        else:
            await message.turn.answer.append(message.text)
        self.query_one("#conversation", VerticalScroll).scroll_end(animate=False)

    def on_chat_screen_finished(self, message: Finished) -> None:
        self.generating = False
        self.refresh_bindings()  # an answer to mark
        answer = message.turn.answer
        if isinstance(message.error, EngineCrashed):  # what came stays on screen, marked
            if not answer.source:
                answer.update("*no answer: the engine crashed*")
            answer.add_class("error")
            self._crashed(self.engine, message.error)
            return
        if isinstance(message.error, ConnectionLost):  # the part that came stays, as it does in the history
            if not answer.source:
                answer.update("*no answer: the connection was lost*")
            answer.add_class("error")
            self.lost = message.error
            self.query_one(StatusBar).show_text(f"{message.error}; F5 reconnects")
            self.notify("The connection was lost: the answer so far is kept. F5 reconnects.", severity="warning",
                        timeout=15)
            self.refresh_bindings()
            return
        if message.error is not None:
            answer.update(f"*{message.error}*")
            answer.add_class("error")
            return
        s = message.done.stats
        note = {"cancelled": " · stopped", "length": " · max tokens", "context": " · context full"}.get(s.stop_reason, "")
        if s.stop_reason == "cancelled":
            answer.add_class("stopped")
        thought = message.turn.thought
        if thought.text:  # open still if no answer came: the thought is all there is
            thought.end(s.reasoning_s, s.reasoning_tokens, folded=thought.folded)
            self.refresh_bindings()
        status = self.query_one(StatusBar)
        status.show_speed(s.decode_tps, s.prefill_tps, s.ttft_s, note,
                          answer_ttft_s=s.answer_ttft_s if s.reasoning_tokens else None)
        status.show_context(s.context_tokens, s.n_ctx)
        self._show_out_of_view()
        self._show_memory()

    def _show_out_of_view(self) -> None:
        """The dim line above the first turn the model still sees, moved and counted anew
        as more turns are left out; at the first, what context memory allows is planned."""
        dropped = self.session.dropped
        if not dropped:
            return
        conversation = self.query_one("#conversation", VerticalScroll)
        first_seen = [w for w in conversation.children if w.has_class("user")][dropped]
        turns = "1 earlier turn is" if dropped == 1 else f"{dropped} earlier turns are"
        larger = f" · --ctx {self.larger_ctx} fits here" if self.larger_ctx else ""
        text = f"{turns} out of the model's view{larger}"
        if self.out_of_view is None:
            self.out_of_view = Static(text, classes="out-of-view")
            conversation.mount(self.out_of_view, before=first_seen)
            if self.larger_ctx is None:
                self._plan_larger_context(self.engine_info)
        else:
            self.out_of_view.update(text)
            conversation.move_child(self.out_of_view, before=first_seen)

    @work(thread=True, exclusive=True, group="larger-context")
    def _plan_larger_context(self, info: EngineInfo) -> None:
        """The largest context memory allows this model here, as `roost run` plans one for
        a long input: the file's header and the planner's arithmetic, once (a remote model
        is not this machine's to plan)."""
        from roost.models import loading

        if not os.path.exists(info.model):
            return
        options = self.app.load_options  # as `roost chat` was given them
        try:
            model = loading.prepare(info.model, engine="mlx" if info.engine == "mlx" else "llama",
                                    **{**options, "ctx": info.n_ctx})
            fits = loading.input_context(model, prompt=0, need=info.n_ctx_train or info.n_ctx,
                                         gpu_layers=options.get("gpu_layers"), kv_type=options.get("kv_type"),
                                         flash_attn=options.get("flash_attn"))
        except RoostError:  # the notice goes without it
            return
        self.app.call_from_thread(self._larger_context_planned, fits)

    def _larger_context_planned(self, fits: int) -> None:
        self.larger_ctx = fits if fits > self.engine_info.n_ctx else 0
        if self.out_of_view is not None:
            self._show_out_of_view()

    # -- keys -----------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.generating:
            self.cancel.set()

    def action_new_chat(self) -> None:
        if self.session is None or self.engine_info is None:
            return
        self.cancel.set()  # an answer in flight stops within a token and is dropped with its chat
        self.session = Session(self.engine, self.params, system=self.system)
        self.query_one("#conversation", VerticalScroll).remove_children()
        self.out_of_view = None
        self.query_one(StatusBar).show_context(0, self.engine_info.n_ctx)
        self.refresh_bindings()

    def action_open_history(self) -> None:
        if self.session is not None and not self.generating:
            self.app.push_screen(HistoryScreen(), self.reopen)

    def reopen(self, path: str | None) -> None:
        if not path:
            return
        saved = history.Conversation(path)
        meta, messages = saved.load()
        self.system = self.app.system = meta.get("system")  # the settings show what it runs under
        self.session = Session(self.engine, self.params, system=self.system, messages=messages, saved=saved)
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.remove_children()
        self.out_of_view = None
        for m in messages:
            if m["role"] == "user":
                conversation.mount(Static(m["content"], classes="user"))
            elif m["role"] == "assistant":
                if m.get("reasoning"):  # saved without its own counts: its length in words
                    words = len(m["reasoning"].split())
                    conversation.mount(Thought(m["reasoning"], f"thought · {words} word{'' if words == 1 else 's'}"))
                conversation.mount(Markdown(m["content"], classes="assistant"))
        conversation.scroll_end(animate=False)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":  # while an answer runs; the room is Good/Bad's otherwise
            return self.generating
        if action == "toggle_thoughts":  # where there is, or will be, a thought to show
            reasons = self.engine_info is not None and self.engine_info.reasoning is not None
            return reasons or any(t.over for t in self.query(Thought))
        if action == "reconnect":
            return self.lost is not None and not self.generating
        if action == "mark":
            return not self.generating and self.session is not None and self.session.saved is not None and any(
                m["role"] == "assistant" for m in self.session.messages)
        return True

    def action_reconnect(self) -> None:
        self.query_one(StatusBar).show_text("connecting again…")
        self.load()  # _loaded puts the new engine under the same conversation; a failure is said, F5 stays

    def action_toggle_thoughts(self) -> None:
        """Every thought in the conversation shown or folded, following the latest's."""
        thoughts = [t for t in self.query(Thought) if t.over]
        if not thoughts:
            self.notify("No thought to show yet", severity="warning")
            return
        folded = not thoughts[-1].folded
        for thought in thoughts:
            thought.fold(folded)

    def action_settings(self) -> None:
        if self.session is not None:
            self.app.push_screen(SettingsScreen(self.system, self.params), self.apply_settings)

    def apply_settings(self, result: tuple[str | None, Params] | None) -> None:
        """Sampling applies from the next answer; a new system prompt starts a new chat,
        since the conversation so far was answered under the old one."""
        if result is None:
            return
        system, self.params = result
        self.session.params = self.app.params = self.params
        if system != self.system:
            self.system = self.app.system = system
            self.action_new_chat()
            self.notify("New chat with the new system prompt")

    def action_copy_answer(self) -> None:
        answers = [m["content"] for m in (self.session.messages if self.session else []) if m["role"] == "assistant"]
        if not answers:
            self.notify("No answer to copy yet", severity="warning")
            return
        from roost.tui import clipboard

        self.notify(clipboard.copy(answers[-1], self.app.copy_to_clipboard, "the last answer"))

    def action_mark(self, good: bool) -> None:
        """The last answer marked good or bad in the conversation's file; for a bad one the
        user may type the right answer. roost eval --from-history makes eval items of them."""
        saved = self.session.saved  # there is an answer: check_action
        index = sum(m["role"] == "assistant" for m in self.session.messages) - 1
        if good:
            saved.mark(index, True)
            self.notify("Marked the last answer good (roost eval --from-history)")
            return

        def typed(answer: str | None) -> None:
            if answer is None:
                return
            saved.mark(index, False, answer)
            self.notify("Marked the last answer bad" + (", with the right answer" if answer else ""))

        self.app.push_screen(RightAnswerScreen(), typed)

    def action_models(self) -> None:
        """The model list over this chat: Esc there comes back to it, a pick replaces it."""
        if self.generating:
            self.notify("Stop the answer first (Esc)", severity="warning")
            return
        self.app.pick_model(self.app.engine_name)

    def on_unmount(self) -> None:
        self.cancel.set()
        if self.engine is not None and not self.generating:  # a generating engine is left to its thread
            self.engine.close()
