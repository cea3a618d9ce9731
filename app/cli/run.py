"""roost run (one answer, streamed) and roost chat (the terminal app), local or --remote."""

from __future__ import annotations

import json
import os
import sys

from roost.backends.base import REASONING
from roost.cli.models import prepare
from roost.cli.terminal import EXIT_INTERRUPTED, first_interrupt_cancels
from roost.errors import UsageError


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


def cmd_run(args) -> int:
    import time

    from roost import report
    from roost.backends import chat_template, load
    from roost.backends.base import Cancel, Done, Params
    from roost.session import Session

    if args.remote:
        if not args.prompt:  # one word after run is the prompt: the server knows its model
            args.model, args.prompt = None, args.model or ""
        prompt = read_prompt(args.prompt)
        loading = time.perf_counter()
        engine = connect_remote(args)
        path = f"{engine.url} {engine.model}"
    else:
        if args.model is None:
            raise UsageError("give a model: roost run MODEL PROMPT (or --remote URL)")
        prompt = read_prompt(args.prompt)
        model = prepare(args)
        path = model.path
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
    params = Params(max_tokens=args.max_tokens, seed=args.seed, **sampled(args), **thinking(args))
    session = Session(engine, params, system=args.system)

    cancel = Cancel()
    done: Done | None = None
    shown = Shown(sys.stdout, sys.stderr, hide_thinking=args.hide_thinking)
    with first_interrupt_cancels(cancel):
        for event in session.send(prompt, cancel):
            if isinstance(event, Done):
                done = event
            elif not args.json:
                shown.token(event)

    if args.json:
        print(json.dumps(answer_dict(path, done, load_s, engine), indent=2))
    else:
        shown.end_thought()
        sys.stdout.write("\n")
        sys.stdout.flush()
    note = unanswered(done.stats)
    if note:
        print(note, file=sys.stderr)
    if args.stats:
        print(report.stats_line(done.stats), file=sys.stderr)
    engine.close()
    return EXIT_INTERRUPTED if done.stats.stop_reason == "cancelled" else 0


def answer_dict(model: str, done, load_s: float, engine) -> dict:
    """roost run --json: the answer (a Done), what ran it and how fast; model is the path,
    or the server's URL and model."""
    return {"model": model, "text": done.text, "reasoning": done.reasoning, "stop_reason": done.stats.stop_reason,
            "load_s": round(load_s, 4), "stats": done.stats.as_dict(), "memory": engine.memory().as_dict(),
            "engine": engine.info().as_dict()}


DIM, PLAIN = "\x1b[2m", "\x1b[0m"


class Shown:
    """roost run's text as it streams: the answer on stdout; a reasoning model's thought on
    stderr, dimmed, where a person is watching (stderr a terminal, no --hide-thinking).
    Where stderr is not a terminal the thought goes nowhere: a script's stdout is the
    answer and its log stays clean; --json carries the thought for a script that wants it."""

    def __init__(self, out, err, hide_thinking: bool = False):
        self.out, self.err = out, err
        self.show_thought = not hide_thinking and err.isatty()
        # NO_COLOR (no-color.org): the thought still shows, without the escape codes.
        self.dim, self.plain = ("", "") if os.environ.get("NO_COLOR") else (DIM, PLAIN)
        self.open_line = None  # REASONING or ANSWER: which one's last line is not yet ended

    def token(self, token) -> None:
        thought = token.kind == REASONING
        if not token.text or thought and not self.show_thought:
            return
        if self.open_line not in (None, token.kind):
            # Thought and answer on lines of their own (a model may think again after it
            # has begun its answer): the newline goes to stderr, so stdout is the answer alone.
            self.end_line()
        if thought:  # dimmed a piece at a time: a Ctrl-C between two never leaves the terminal dim
            self.err.write(f"{self.dim}{token.text}{self.plain}")
            self.err.flush()
        else:
            self.out.write(token.text)
            self.out.flush()
        self.open_line = None if token.text.endswith("\n") else token.kind

    def end_thought(self) -> None:
        """At the end: a thought's open line is ended, so that what follows does not run on
        from it (the answer's is roost run's to end, on stdout)."""
        if self.open_line == REASONING:
            self.end_line()

    def end_line(self) -> None:
        self.err.write("\n")
        self.err.flush()
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


def connect_remote(args):
    """The remote engine for --remote; what only a local model takes is refused."""
    from roost.backends import connect

    local = [f"--{name.replace('_', '-')}" for name in ("engine", "ctx", "threads", "gpu_layers")
             if getattr(args, name, None) is not None]
    if local:
        raise UsageError(f"{', '.join(local)}: set on the server (roost serve), not with --remote")
    return connect(args.remote, args.model, api_key_of(args))


def api_key_of(args) -> str | None:
    """--api-key, else ROOST_API_KEY: the same key names a server and its clients."""
    import os

    return args.api_key or os.environ.get("ROOST_API_KEY") or None


def cmd_chat(args) -> int:
    from roost.backends import load
    from roost.backends.base import Params
    from roost.tui.app import RoostApp

    params = Params(seed=args.seed, **sampled(args), **thinking(args))
    if args.model is None and not args.remote:
        from roost.machine import hardware
        from roost.models import loading

        offload = loading.can_offload()
        loading.check_gpu_layers(args.gpu_layers, offload)
        app = RoostApp(params=params, system=args.system, machine=hardware.detect(gpus=offload),
                       load_options={"ctx": args.ctx, "gpu_layers": args.gpu_layers, "threads": args.threads})
    elif args.remote:  # connected before the app opens: an unreachable server is one line here
        remote = connect_remote(args)
        app = RoostApp(lambda: remote, f"{remote.model} at {remote.host}", params, system=args.system)
    else:
        model = prepare(args)
        app = RoostApp(lambda: load(model.path, model.plan, engine=model.engine, isolated=True), model.name, params,
                       system=args.system)
    app.run()
    return 0
