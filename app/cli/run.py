"""roost run (one answer, streamed) and roost chat (the terminal app), local or --remote."""

from __future__ import annotations

import json
import os
import sys

from roost.backends.base import ANSWER, REASONING
from roost.cli.models import prepare
from roost.cli.terminal import EXIT_INTERRUPTED, first_interrupt_cancels
from roost.errors import ConnectionLost, RemoteError, UsageError


def read_prompt(argument: str) -> str:
    parts = [argument] if argument else []
    stdin = sys.stdin
    if stdin is not None and not stdin.isatty():
        piped = stdin.buffer.read().decode("utf-8", errors="replace")
        if piped.strip():
            parts.append(piped)
    prompt = "\n\n".join(parts)
    if not prompt.strip():
        raise UsageError("the prompt is empty: give it as an argument or pipe it in")
    return prompt


def read_schema(argument: str | None) -> str | None:
    """--schema: the schema itself (text that starts with "{") or a file holding it, as
    JSON text; UsageError for one that is not JSON or cannot be kept (backends/grammar.py)."""
    from roost.backends.grammar import to_gbnf

    if argument is None:
        return None
    text, where = argument, "the schema"
    if not argument.lstrip().startswith("{"):
        try:
            with open(argument, encoding="utf-8") as f:
                text, where = f.read(), argument
        except OSError as e:
            raise UsageError(f"--schema: cannot read {argument}: {e.strerror}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--schema: {where} is not JSON: {e}") from None
    to_gbnf(schema)
    return json.dumps(schema, ensure_ascii=False)


def cmd_run(args) -> int:
    import time

    from roost import report
    from roost.backends import chat_template, load
    from roost.backends.base import Cancel, Done, Params, Progress
    from roost.session import Session

    schema = read_schema(args.schema)
    raised = None  # the note saying the context was raised to hold a long input
    if args.remote or args.ssh:
        if not args.prompt:  # one word after run is the prompt: the server knows its model
            args.model, args.prompt = None, args.model or ""
        prompt = read_prompt(args.prompt)
        loading = time.perf_counter()
        engine = connect_remote(args)
        path, server = f"{engine.url} {engine.model}", engine.url
    elif args.model is None:
        raise UsageError("give a model: roost run MODEL PROMPT (or --remote URL)")
    elif (engine := warm_server(args, prompt := read_prompt(args.prompt))) is not None:
        loading = time.perf_counter()  # loaded there: a load on demand shows in the time to first token
        path, server = f"{engine.url} {engine.model}", engine.url
    else:
        model = prepare(args)
        if args.ctx is None:
            model, raised = sized_to_input(args, model, prompt)
        path, server = model.path, None
        loading = time.perf_counter()
        engine = load(model.path, model.plan, engine=model.engine)
        info = engine.info()
        if (missing := chat_template.missing_note(info.chat_template, model.name)) is not None:
            print(f"roost: note: {missing}", file=sys.stderr)
        if (args.think or args.think_budget is not None) and info.reasoning is None:
            # Said, not refused: the same command may be run over models that do and do not think.
            print(f"roost: note: {model.name} does not reason (its template has no thought): "
                  "--think and --think-budget change nothing", file=sys.stderr)
    load_s = time.perf_counter() - loading
    params = Params(max_tokens=args.max_tokens, seed=args.seed, schema=schema, **sampled(args), **thinking(args))
    session = Session(engine, params, system=args.system)

    cancel = Cancel()
    done: Done | None = None
    shown = Shown(sys.stdout, sys.stderr, hide_thinking=args.hide_thinking, progress=args.stats)
    with first_interrupt_cancels(cancel):
        try:
            for event in session.send(prompt, cancel):
                if isinstance(event, Progress):
                    shown.progress(event)
                    continue
                shown.end_progress()
                if isinstance(event, Done):
                    done = event
                elif not args.json:
                    shown.token(event)
        except ConnectionLost as lost:
            if not args.json:  # the part that came stays printed, and the error goes below it
                shown.end_thought()
                sys.stdout.write("\n")
                sys.stdout.flush()
            raise RemoteError(f"{lost}: the answer above is cut short; run the command again to reconnect") from None

    if args.json:
        print(json.dumps({**answer_dict(path, done, load_s, engine), "context_raised": raised, "server": server},
                         indent=2))
    else:
        shown.end_thought()
        sys.stdout.write("\n")
        sys.stdout.flush()
    note = unanswered(done.stats)
    if note:
        print(note, file=sys.stderr)
    if args.stats:
        if raised:
            print(f"roost: {raised}", file=sys.stderr)
        print(report.stats_line(done.stats), file=sys.stderr)
    engine.close()
    if done.stats.stop_reason == "cancelled":
        return EXIT_INTERRUPTED
    if schema is not None and done.stats.stop_reason in ("length", "context"):
        # The grammar held every token to the schema, but the JSON is not whole: a script must know.
        print(f"roost: error: the JSON was cut short at {done.stats.generated_tokens} tokens "
              f"({'-n' if done.stats.stop_reason == 'length' else 'the context'}); raise "
              f"{'-n' if done.stats.stop_reason == 'length' else '--ctx'}", file=sys.stderr)
        return 1
    return 0


# Room for the answer when -n is not given and the input sets the context: a page or two
# (a summary, a few paragraphs), enough for most answers about a document, and small
# beside a document of more than the default context (the cache is allocated whole).
ANSWER_ROOM = 1024
# What the chat template adds to the text (roles, markers, a default system prompt) is
# not counted before loading: this much is allowed for it.
TEMPLATE_ROOM = 64


def sized_to_input(args, model, prompt: str):
    """roost run with no --ctx: a context that holds the input and its answer, the
    default's or more (up to what the model was trained on and what fits in memory here,
    as the planner says). (the model prepared at that context, the note saying it was
    raised and why, or None)."""
    from argparse import Namespace

    from roost.cli.models import prepare
    from roost.models import loading

    if fits_uncounted(args, prompt, model.plan.n_ctx):
        return model, None
    text = "\n\n".join(t for t in (args.system, prompt) if t)
    room = args.max_tokens or ANSWER_ROOM
    counted = loading.input_tokens(model.path, model.engine, text)
    if counted is None:
        return model, None
    prompt_tokens = counted + TEMPLATE_ROOM
    if prompt_tokens + room <= model.plan.n_ctx:
        return model, None
    n_ctx = loading.input_context(model, prompt_tokens, prompt_tokens + room, args.gpu_layers, args.kv,
                                  args.flash_attn)
    planned = model.plan.n_ctx
    if n_ctx <= planned:
        return model, None
    model = prepare(Namespace(**{**vars(args), "ctx": n_ctx}))
    return model, (f"context raised from {planned:,} to {n_ctx:,}: the input is about "
                   f"{prompt_tokens:,} tokens, with room for {n_ctx - prompt_tokens:,} of answer")


def answer_dict(model: str, done, load_s: float, engine) -> dict:
    """roost run --json: the answer (a Done), what ran it and how fast; model is the path,
    or the server's URL and model."""
    return {"model": model, "text": done.text, "reasoning": done.reasoning, "stop_reason": done.stats.stop_reason,
            "load_s": round(load_s, 4), "stats": done.stats.as_dict(), "memory": engine.memory().as_dict(),
            "engine": engine.info().as_dict()}


DIM, PLAIN = "\x1b[2m", "\x1b[0m"
CLEAR_LINE = "\x1b[K"  # to the line's end


class Shown:
    """roost run's text as it streams: the answer on stdout; a reasoning model's thought on
    stderr, dimmed, where a person is watching (stderr a terminal, no --hide-thinking).
    Where stderr is not a terminal the thought goes nowhere: a script's stdout is the
    answer and its log stays clean; --json carries the thought for a script that wants it.
    progress (--stats): a long prompt's reading shows on one line of stderr, at a terminal
    only, rewritten as it goes and cleared before the answer."""

    def __init__(self, out, err, hide_thinking: bool = False, progress: bool = False):
        self.out, self.err = out, err
        self.show_thought = not hide_thinking and err.isatty()
        self.show_progress = progress and err.isatty()
        self.reading = False  # a progress line is on screen
        # NO_COLOR (no-color.org): the thought still shows, without the escape codes.
        self.dim, self.plain = ("", "") if os.environ.get("NO_COLOR") else (DIM, PLAIN)
        self.open_line = None  # REASONING or ANSWER: which one's last line is not yet ended
        self.last = None  # the kind of the last piece shown
        self.err_tail = ""  # the end of what stderr has had since the last thought's text

    def token(self, token) -> None:
        thought = token.kind == REASONING
        if not token.text or thought and not self.show_thought:
            return
        if self.open_line not in (None, token.kind):
            # Thought and answer on lines of their own (a model may think again after it
            # has begun its answer): the newline goes to stderr, so stdout is the answer alone.
            self.end_line()
        if thought and self.last == ANSWER and self.err_tail:
            # A second thought: a blank line from the first on stderr, as --json keeps them
            # (Texts.THOUGHTS_APART), whatever the answer between them ended with.
            ended = len(self.err_tail) - len(self.err_tail.rstrip("\n"))
            self.err.write("\n" * (2 - ended))
            self.err_tail = ""
        if thought:  # dimmed a piece at a time: a Ctrl-C between two never leaves the terminal dim
            self.err.write(f"{self.dim}{token.text}{self.plain}")
            self.err.flush()
            self.err_tail = token.text[-2:]
        else:
            self.out.write(token.text)
            self.out.flush()
        self.last = token.kind
        self.open_line = None if token.text.endswith("\n") else token.kind

    def progress(self, progress) -> None:
        from roost import report

        if self.show_progress:
            self.err.write(f"\r{report.reading(progress)}{CLEAR_LINE}")
            self.err.flush()
            self.reading = True

    def end_progress(self) -> None:
        if self.reading:
            self.err.write(f"\r{CLEAR_LINE}")
            self.err.flush()
            self.reading = False

    def end_thought(self) -> None:
        """At the end: a thought's open line is ended, so that what follows does not run on
        from it (the answer's is roost run's to end, on stdout)."""
        if self.open_line == REASONING:
            self.end_line()

    def end_line(self) -> None:
        self.err.write("\n")
        self.err.flush()
        self.err_tail = (self.err_tail + "\n")[-2:]
        self.open_line = None


_STILL_THINKING = {
    "length": "it reached the token limit; raise -n or set --think-budget",
    "context": "the context was full; raise --ctx or set --think-budget",
    "cancelled": "it was stopped",
    "stop": "it ended its turn",
}


def unanswered(stats) -> str | None:
    """One line for a reasoning model that gave no answer, only a thought: stdout is empty
    then, and whoever reads it (the thought hidden or not) should know why."""
    if not stats.reasoning_tokens or stats.answer_ttft_s is not None:
        return None
    return (f"roost: no answer: the model was still thinking ({stats.reasoning_tokens} tokens) when "
            f"{_STILL_THINKING[stats.stop_reason]}")


def sampled(args) -> dict:
    """The sampling settings as given (or their defaults), by Params field."""
    from roost import sampling

    return {s.name: getattr(args, s.name) for s in sampling.SETTINGS}


def thinking(args) -> dict:
    """--think and --think-budget, by Params field."""
    return {"think": args.think, "think_budget": args.think_budget}


# What only a model loaded here takes: a server decides these for itself.
LOCAL_ONLY = ("engine", "ctx", "threads", "gpu_layers", "kv", "flash_attn")


def connect_remote(args):
    """The remote engine for --remote, or for --ssh on the server it starts on the box;
    what only a local model takes is refused."""
    from roost.backends import connect

    ssh = getattr(args, "ssh", None)
    local = [f"--{name.replace('_', '-')}" for name in LOCAL_ONLY if getattr(args, name, None) is not None]
    if local:
        raise UsageError(f"{', '.join(local)}: set on the server (roost serve), not with "
                         f"{'--ssh' if ssh else '--remote'}")
    if ssh:
        if args.remote:
            raise UsageError("--ssh and --remote: give one (--ssh starts the server and its tunnel itself)")
        return box_engine(args, interactive=sys.stdin.isatty())
    return connect(args.remote, args.model, api_key_of(args))


def box_engine(args, interactive: bool):
    """--ssh: roost serve started on the box, as the remote engine on it (app/ssh.py)."""
    from roost.ssh import Box

    return Box(args.ssh, args.model, args.ssh_roost, interactive=interactive).open()


def warm_server(args, prompt: str):
    """roost run MODEL without --remote: a roost server running on this machine that has
    MODEL loaded or can load it (its /v1/models lists what it serves), as a remote engine,
    so that a one-shot prompt skips the load; None: load it here. Any server that cannot
    be reached or refuses is passed over without a word: the answer is the same either way."""
    from roost.errors import RoostError
    from roost.models.loading import DEFAULT_CTX

    # An option only a local load honours (--ctx, --engine, --kv...), given explicitly,
    # means here: the server has its own settings and would silently ignore it.
    if args.no_server or any(getattr(args, name, None) is not None for name in LOCAL_ONLY):
        return None
    from roost.serve import state

    for found in state.running():
        if args.model not in state.served(found):
            continue
        from roost.backends import connect

        try:
            engine = connect(found["url"], args.model, found["api_key"])
        except RoostError:
            continue
        # A model the server has yet to load is taken to get the default context.
        if fits_uncounted(args, prompt, engine.info().n_ctx or DEFAULT_CTX):
            return engine
        engine.close()  # a long input: the local path sizes a context to it (sized_to_input)
        return None
    return None


def fits_uncounted(args, prompt: str, n_ctx: int) -> bool:
    """Whether the input and its answer surely fit n_ctx without counting tokens: no more
    tokens than bytes (and a BOS), and the template's room."""
    text = "\n\n".join(t for t in (args.system, prompt) if t)
    return len(text.encode("utf-8")) + 1 + TEMPLATE_ROOM + (args.max_tokens or ANSWER_ROOM) <= n_ctx


def api_key_of(args) -> str | None:
    """--api-key, else ROOST_API_KEY: the same key names a server and its clients."""
    import os

    return args.api_key or os.environ.get("ROOST_API_KEY") or None


def cmd_chat(args) -> int:
    from roost.backends import load
    from roost.backends.base import Params
    from roost.tui.app import RoostApp

    params = Params(seed=args.seed, **sampled(args), **thinking(args))
    if args.model is None and not args.remote and not args.ssh:
        from roost.machine import hardware
        from roost.models import loading

        offload = loading.can_offload()
        loading.check_gpu_layers(args.gpu_layers, offload)
        app = RoostApp(params=params, system=args.system, machine=hardware.detect(gpus=offload),
                       load_options={"ctx": args.ctx, "gpu_layers": args.gpu_layers, "threads": args.threads,
                                     "kv_type": args.kv, "flash_attn": args.flash_attn})
    elif args.remote or args.ssh:  # connected before the app opens: an unreachable server is one line here
        remote = connect_remote(args)
        first = [remote]

        def connected():
            # Reconnecting (F5 after a lost connection): --remote's engine again; for --ssh
            # the whole setup anew, with no terminal to ask at while the app has it.
            if first:
                return first.pop()
            return box_engine(args, interactive=False) if args.ssh else remote

        app = RoostApp(connected, f"{remote.model} at {remote.host}", params, system=args.system)
    else:
        model = prepare(args)
        app = RoostApp(lambda: load(model.path, model.plan, engine=model.engine, isolated=True), model.name, params,
                       system=args.system)
    app.run()
    return 0
