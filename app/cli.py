"""The `roost` command.

Start-up matters for one-shot prompts, so this module imports only the standard
library at load; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from roost import __version__
from roost.errors import RoostError, UsageError

EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roost", description="Run open LLMs on your own machine.")
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="answer one prompt and exit",
        description="Answer one prompt and exit. The prompt comes from the argument, "
        "from standard input when piped, or both (argument first).",
    )
    run.add_argument("model", metavar="MODEL", help='a .gguf file, or "demo" for the bundled SmolLM2-135M')
    run.add_argument("prompt", metavar="PROMPT", nargs="?", default="", help="the prompt")
    run.add_argument("-s", "--system", help="system prompt")
    run.add_argument("-n", "--max-tokens", type=_positive_int, help="stop after this many tokens (default: until the model stops)")
    run.add_argument("-t", "--temperature", type=_non_negative_float, default=0.8, help="0 for greedy (default: 0.8)")
    run.add_argument("--seed", type=int, help="sampling seed, for repeatable answers")
    run.add_argument("-c", "--ctx", type=_positive_int, default=4096, help="context window in tokens (default: 4096)")
    run.add_argument("--threads", type=_positive_int, help="CPU threads (default: one per physical core)")
    run.add_argument("--gpu-layers", type=int, default=0, help="layers to put on the GPU, -1 for all (default: 0)")
    run.add_argument("--stats", action="store_true", help="print speed, time to first token and memory to stderr")
    run.add_argument("--json", action="store_true", help="print one JSON object with the text and all stats")
    run.set_defaults(handler=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return args.handler(args)
    except RoostError as e:
        print(f"roost: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nroost: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other shell tools do.
        sys.stdout = None
        return 0


def _read_prompt(argument: str) -> str:
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

    from roost import catalog
    from roost.backends import load
    from roost.backends.base import Cancel, Done, Params, Plan
    from roost.session import Session

    prompt = _read_prompt(args.prompt)
    path = catalog.resolve(args.model)
    plan = Plan(n_ctx=args.ctx, n_gpu_layers=args.gpu_layers, n_threads=args.threads)
    loading = time.perf_counter()
    engine = load(path, plan)
    load_s = time.perf_counter() - loading
    params = Params(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    session = Session(engine, params, system=args.system)

    cancel = Cancel()
    done: Done | None = None
    with _first_interrupt_cancels(cancel):
        for event in session.send(prompt, cancel):
            if isinstance(event, Done):
                done = event
            elif not args.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()

    if args.json:
        print(json.dumps({
            "model": path,
            "text": done.text,
            "stop_reason": done.stats.stop_reason,
            "load_s": round(load_s, 4),
            "stats": done.stats.as_dict(),
            "memory": engine.memory().as_dict(),
            "engine": engine.info().as_dict(),
        }, indent=2))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if args.stats:
        print(stats_line(done.stats), file=sys.stderr)
    engine.close()
    return EXIT_INTERRUPTED if done.stats.stop_reason == "cancelled" else 0


def stats_line(stats) -> str:
    mib = stats.peak_rss_bytes / 2**20
    line = (
        f"prompt {stats.prompt_tokens} tok ({stats.cached_tokens} cached) at {stats.prefill_tps:.1f} tok/s"
        f" · generated {stats.generated_tokens} tok at {stats.decode_tps:.1f} tok/s"
        f" · TTFT {stats.ttft_s:.3f} s · peak memory {mib:.0f} MiB"
        f" · context {stats.context_tokens}/{stats.n_ctx}"
    )
    if stats.stop_reason != "stop":
        line += f" · stopped: {stats.stop_reason}"
    return line


class _first_interrupt_cancels:
    """Ctrl-C during generation stops it cleanly within a token; a second Ctrl-C is the
    usual KeyboardInterrupt, for an engine that does not come back."""

    def __init__(self, cancel) -> None:
        self.cancel = cancel

    def _handle(self, signum, frame) -> None:
        if self.cancel.is_set():
            raise KeyboardInterrupt
        self.cancel.set()

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


if __name__ == "__main__":
    sys.exit(main())
