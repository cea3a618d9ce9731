"""The `roost` command.

Start-up matters for one-shot prompts, so this module imports only the standard
library at load; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from roost import __version__
from roost.backends import ENGINES
from roost.errors import RoostError, UsageError
from roost.models.loading import DEFAULT_CTX

EXIT_INTERRUPTED = 130
DEFAULT_PORT = 8080
# Help for what several commands take, written once so that it reads the same everywhere.
MODEL_HELP = ('a catalog name (roost search lists them), optionally NAME:QUANT (NAME:Q4_K_M, NAME:4bit); '
              'a Hugging Face repo, owner/repo or owner/repo:file.gguf; a .gguf file; an MLX model folder; '
              'or "demo", the bundled SmolLM2-135M')
CTX_DEFAULT = f"{DEFAULT_CTX}, or the model's limit if lower"
ENGINE_HELP = ("llama (llama.cpp: .gguf files) or mlx (MLX model folders and MLX builds of catalog models) "
               "(default: MLX on Apple Silicon where the model's best MLX build that fits is about as good as its "
               "best GGUF that fits, else llama; NAME:Q8_0 means llama, NAME:4bit mlx)")
YES_HELP = "download a model that is not here yet without asking first (default: ask, at a terminal)"
THREADS_HELP = "CPU threads for llama.cpp (default: one per physical core; MLX chooses its own)"
GPU_LAYERS_HELP = ("layers to put on the GPU with a CUDA or Metal build of llama.cpp, -1 for all, 0 for none "
                   "(default: as many as fit)")
API_KEY_HELP = ("the API key, a bearer token: roost serve requires it on every request but /health, and a client "
                "(--remote, or a server URL given to eval) sends it (default: $ROOST_API_KEY, if set)")
JSON_HELP = "print the result as JSON on stdout, for scripts (default: text)"
SYSTEM_HELP = "system prompt (default: the model's own, if its chat template has one)"
TEMPERATURE_HELP = "sampling temperature, 0 for greedy (default: 0.8)"
SEED_HELP = "sampling seed, for repeatable answers (default: a random one each time)"
HISTORY_HELP = "show the earlier results kept on this machine instead, matching MODEL if given (default: run)"
REMOTE_HELP = ("use a model served elsewhere over the OpenAI API (roost serve, llama-server, vLLM, Ollama), "
               "e.g. http://127.0.0.1:8080 (default: a model on this machine)")
PPL_CTX = 512  # llama-perplexity's default chunk, so that figures compare with the community's


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


def _ctx_option(command, default: str = CTX_DEFAULT, more: str = "") -> None:
    command.add_argument("-c", "--ctx", type=_positive_int, metavar="N",
                         help=f"context window in tokens, which memory is planned for (default: {default}){more}")


def _engine_option(command) -> None:
    command.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)


def _yes_option(command) -> None:
    command.add_argument("-y", "--yes", action="store_true", help=YES_HELP)


def _json_option(command) -> None:
    command.add_argument("--json", action="store_true", help=JSON_HELP)


def _api_key_option(command) -> None:
    command.add_argument("--api-key", metavar="KEY", help=API_KEY_HELP)


def _local_engine_options(command) -> None:
    """What loading a model on this machine takes: --threads, --gpu-layers, -y, --engine."""
    command.add_argument("--threads", type=_positive_int, metavar="N", help=THREADS_HELP)
    command.add_argument("--gpu-layers", type=int, metavar="N", help=GPU_LAYERS_HELP)
    _yes_option(command)
    _engine_option(command)


def _sampling_options(command) -> None:
    command.add_argument("-s", "--system", metavar="TEXT", help=SYSTEM_HELP)
    command.add_argument("-t", "--temperature", type=_non_negative_float, default=0.8, metavar="T",
                         help=TEMPERATURE_HELP)
    command.add_argument("--seed", type=int, metavar="N", help=SEED_HELP)


def _remote_options(command) -> None:
    command.add_argument("--remote", metavar="URL", help=REMOTE_HELP)
    _api_key_option(command)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roost", description="Run open LLMs on your own machine. Without a command: roost chat.")
    parser.add_argument("--version", action="version", version=f"roost {__version__}",
                        help="print roost's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="answer one prompt and exit",
        description="Answer one prompt and exit. The prompt comes from the argument, "
        "from standard input when piped, or both (argument first).",
    )
    run.add_argument("model", metavar="MODEL", nargs="?",
                     help=f"{MODEL_HELP}; with --remote, the server's model (optional when it serves one)")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", default="",
                     help="the prompt (default: standard input, when piped; with both, the argument comes first)")
    run.add_argument("-n", "--max-tokens", type=_positive_int, metavar="N",
                     help="stop after N tokens (default: when the model stops or the context is full)")
    _sampling_options(run)
    _ctx_option(run)
    run.add_argument("--stats", action="store_true",
                     help="print one line to stderr: prompt and generation tok/s, time to first token, peak memory, "
                     "context used (default: off)")
    _json_option(run)
    _local_engine_options(run)
    _remote_options(run)
    run.set_defaults(handler=cmd_run)

    fit = commands.add_parser(
        "fit",
        help="what fits on this machine, and how fast it can run",
        description="For each model file: memory needed at the context, whether it fits on the GPU "
        "(fully, partly, not), the decode ceiling, and the pick with its reason.",
    )
    fit.add_argument("models", metavar="MODEL", nargs="+",
                     help='one or more .gguf files (quants of one model), "demo", or one catalog name or Hugging Face '
                     'repo (owner/repo), whose quants are all ranked')
    _ctx_option(fit)
    where = fit.add_mutually_exclusive_group()
    where.add_argument("--gpu", action="store_true",
                       help="plan for the GPU; an error if there is none (default: the GPU if there is one)")
    where.add_argument("--cpu", action="store_true", help="plan for the CPU alone (default: the GPU if there is one)")
    _json_option(fit)
    fit.set_defaults(handler=cmd_fit)

    pull = commands.add_parser("pull", help="download a model (the quant that fits here, unless one is named)",
                               description="Download a model: the quant the fit planner picks for this machine, "
                               "or the one named; it shows the ranking and asks first at a terminal.")
    pull.add_argument("model", metavar="MODEL",
                      help="a catalog name, optionally NAME:QUANT (NAME:Q4_K_M, NAME:4bit); a Hugging Face repo, "
                      "owner/repo, owner/repo:QUANT or owner/repo:file.gguf")
    _ctx_option(pull)
    _yes_option(pull)
    _engine_option(pull)
    pull.set_defaults(handler=cmd_pull)

    ls = commands.add_parser("ls", help="downloaded models",
                             description="The models downloaded to the Hugging Face cache: name, quant, size, "
                             "whether each fits on this machine now, and its path.")
    _json_option(ls)
    ls.set_defaults(handler=cmd_ls)

    rm = commands.add_parser("rm", help="remove a downloaded model",
                             description="Remove a downloaded model from the Hugging Face cache.")
    rm.add_argument("model", metavar="MODEL",
                    help="a catalog name (all its quants), NAME:QUANT, a Hugging Face repo (owner/repo), "
                    "owner/repo:file.gguf, or the path `roost ls` shows")
    rm.set_defaults(handler=cmd_rm)

    search = commands.add_parser("search", help="search the catalog, with what fits here",
                                 description="The catalog's models (models.toml) matching TEXT, each with the quant "
                                 "that fits this machine best, how it fits and its speed ceiling.")
    search.add_argument("text", metavar="TEXT", nargs="*",
                        help="words that must all appear in the name, family, kind or description "
                        "(default: none, the whole catalog)")
    _ctx_option(search)
    _json_option(search)
    search.set_defaults(handler=cmd_search)

    chat = commands.add_parser("chat", help="chat in the terminal app (the default command)",
                               description="Open the chat app on a model; without one, pick the engine and model in the app.")
    chat.add_argument("model", metavar="MODEL", nargs="?",
                      help=f"{MODEL_HELP}; with --remote, the server's model (default: pick one in the app)")
    _sampling_options(chat)
    _ctx_option(chat)
    _local_engine_options(chat)
    _remote_options(chat)
    chat.set_defaults(handler=cmd_chat)

    serve = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Load MODEL once and answer OpenAI API requests: /v1/chat/completions, /v1/completions, "
        "/v1/models, /health, /metrics. One answer at a time; others wait in a queue.")
    serve.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every network)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                       help=f"port to listen on, 0 for any free one (default: {DEFAULT_PORT})")
    _api_key_option(serve)
    serve.add_argument("--name", metavar="ID",
                       help="the model's id in the API (default: MODEL as given, or the file's name)")
    serve.add_argument("--queue", type=_positive_int, default=16, metavar="N",
                       help="requests that may wait while one is answered; more get 503 (default: 16)")
    _ctx_option(serve)
    _local_engine_options(serve)
    serve.set_defaults(handler=cmd_serve)

    bench = commands.add_parser(
        "bench", help="measure prompt processing and generation speed here",
        description="As llama-bench does: prompt processing (ppN) and generation (tgN) tok/s over several "
        "repetitions, mean ± sd, with time to first token and load time apart, and generation beside the "
        "bandwidth ceiling. Each result is kept; --history shows them.")
    bench.add_argument("model", metavar="MODEL", nargs="?",
                       help=f"{MODEL_HELP}; with --remote, the server's model (optional); with --history, text "
                       "to match")
    bench.add_argument("-p", "--pp", type=_positive_int, default=512, metavar="N",
                       help="prompt tokens per prompt-processing run (default: 512)")
    bench.add_argument("-n", "--tg", type=_positive_int, default=128, metavar="N",
                       help="tokens generated per generation run (default: 128)")
    bench.add_argument("-r", "--repetitions", type=_positive_int, default=5, metavar="N",
                       help="runs of each, after one warm-up run (default: 5)")
    _ctx_option(bench, default="enough for the runs, PP + TG + 64")
    _local_engine_options(bench)
    _json_option(bench)
    bench.add_argument("--history", action="store_true", help=HISTORY_HELP)
    _remote_options(bench)
    bench.set_defaults(handler=cmd_bench)

    evaluate = commands.add_parser(
        "eval", help="compare models or quants here: accuracy on an eval set, perplexity, drift",
        description="Runs each model in turn over an eval set (JSON lines; the built-in one has 52 items: "
        "arithmetic, units, facts, multiple choice, following a format), greedy, and shows accuracy with its "
        "95% confidence interval, generation speed and memory, and which items changed from the first model. "
        "--ppl: perplexity on a text instead, and KL divergence and top-1 agreement against the first model. "
        "Results are kept with roost bench's; --history shows them.")
    evaluate.add_argument("models", metavar="MODEL", nargs="*",
                          help=f"{MODEL_HELP}; or the URL of an OpenAI-compatible server. The first is the one the "
                          "others are compared with; with --history, text to match")
    evaluate.add_argument("--set", metavar="FILE",
                          help="your own eval set, JSON lines (see README: roost eval) (default: the built-in set, "
                          "52 items)")
    evaluate.add_argument("--limit", type=_positive_int, metavar="N",
                          help="only the set's first N items (default: all)")
    evaluate.add_argument("--answers", action="store_true",
                          help="also list every item's verdict and answer (default: the summary table only)")
    evaluate.add_argument("--ppl", metavar="TEXTFILE",
                          help="score perplexity on this text, and KL divergence from the first model, instead of "
                          "the eval set (default: the eval set)")
    evaluate.add_argument("--chunks", type=_positive_int, metavar="N",
                          help="with --ppl, score only the text's first N chunks (default: all)")
    golden = evaluate.add_mutually_exclusive_group()
    golden.add_argument("--golden", action="store_true",
                        help="store each model's answers the first time; later, warn with a diff where they drift "
                        "(default: off)")
    golden.add_argument("--golden-update", action="store_true",
                        help="store each model's answers as golden anew (default: off)")
    _ctx_option(evaluate, more=f"; with --ppl, tokens per chunk (default: {PPL_CTX})")
    _local_engine_options(evaluate)
    _api_key_option(evaluate)
    _json_option(evaluate)
    evaluate.add_argument("--history", action="store_true", help=HISTORY_HELP)
    evaluate.set_defaults(handler=cmd_eval)

    doctor = commands.add_parser("doctor", help="check this machine and roost's engines",
                                 description="The machine, the engines that can run here, and fixes for common "
                                 "mismatches.")
    doctor.add_argument("--measure", action="store_true",
                        help="measure CPU memory bandwidth (a few seconds) and keep it for speed predictions "
                        "(default: the kept measurement, else an estimate)")
    _json_option(doctor)
    doctor.add_argument("--self-test", action="store_true",
                        help="run the engine's self-test afresh (the demo model, in a process of its own) and print "
                             "only its result; exits 1 if the engine crashed (default: show the kept result)")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):  # a script or a pipe wants the usage, not an app
                parser.print_help()
                return 0
            args = parser.parse_args(["chat"])
    except RoostError as e:
        print(f"roost: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.handler is cmd_run:
        return _guarded(args)
    return _dispatch(args)


def _dispatch(args) -> int:
    try:
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


# The signals native code dies of: a crash, an abort (a failed GGML_ASSERT), the OOM killer.
_CRASHES = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGKILL")


def _guarded(args) -> int:
    """Run a one-shot command in a forked copy of this process, so that a native crash in
    the engine (which no Python code survives) is one line from here, not a dead shell
    line. Forked, not spawned: nothing is imported again, so it costs a millisecond where
    a fresh engine process costs 0.1 s of start-up (bench/child_overhead.py). The copy
    shares the terminal: it streams, reads stdin and takes Ctrl-C as roost always did."""
    if not hasattr(os, "fork"):  # Windows: in-process, as before
        return _dispatch(args)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _dispatch(args)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream and stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code if isinstance(code, int) else 1)
    status = _wait_forwarding(pid)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    died = signal.Signals(os.WTERMSIG(status)).name
    if died in _CRASHES:
        from roost.errors import EngineCrashed

        crash = EngineCrashed(died, "running the model")
        print(f"\nroost: error: {crash}; `roost doctor --self-test` checks the engine build", file=sys.stderr)
        return crash.exit_code
    return 128 + os.WTERMSIG(status)  # ended from outside (SIGTERM, SIGHUP): as a shell reports it


def _wait_forwarding(pid: int) -> int:
    """Wait for the copy, passing on the signals meant for roost. The terminal's Ctrl-C
    reaches both processes (one process group): the copy handles it, and passing it on
    too would make one Ctrl-C count as two. One sent to this process alone (kill -INT,
    timeout -s INT) is passed on."""
    if not hasattr(signal, "sigwaitinfo"):  # macOS: Ctrl-C from the terminal only
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for forwarded in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(forwarded, lambda signum, frame: os.kill(pid, signum))
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        info = signal.sigwaitinfo(watched)
        from_a_process = info.si_code <= 0  # SI_USER, SI_QUEUE, SI_TKILL; the terminal's is SI_KERNEL
        if info.si_signo != signal.SIGCHLD and (info.si_signo != signal.SIGINT or from_a_process):
            os.kill(pid, info.si_signo)


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

    from roost import report
    from roost.backends import load
    from roost.backends.base import Cancel, Done, Params
    from roost.session import Session

    if args.remote:
        if not args.prompt:  # one word after run is the prompt: the server knows its model
            args.model, args.prompt = None, args.model or ""
        prompt = _read_prompt(args.prompt)
        loading = time.perf_counter()
        engine = _connect(args)
        path = f"{engine.url} {engine.model}"
    else:
        if args.model is None:
            raise UsageError("give a model: roost run MODEL PROMPT (or --remote URL)")
        prompt = _read_prompt(args.prompt)
        path, _, plan, engine_name, _ = _loading_plan(args)
        loading = time.perf_counter()
        engine = load(path, plan, engine=engine_name)
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
        print(report.stats_line(done.stats), file=sys.stderr)
    engine.close()
    return EXIT_INTERRUPTED if done.stats.stop_reason == "cancelled" else 0


def _connect(args):
    """The remote engine for --remote; what only a local model takes is refused."""
    from roost.backends import connect

    local = [f"--{name.replace('_', '-')}" for name in ("engine", "ctx", "threads", "gpu_layers")
             if getattr(args, name, None) is not None]
    if local:
        raise UsageError(f"{', '.join(local)}: set on the server (roost serve), not with --remote")
    return connect(args.remote, args.model, _api_key(args))


def _api_key(args) -> str | None:
    """--api-key, else ROOST_API_KEY: the same key names a server and its clients."""
    import os

    return args.api_key or os.environ.get("ROOST_API_KEY") or None


def _loading_plan(args):
    """(path, name, plan, engine, the planner's option) for run, chat, serve and bench: the
    engine chosen, the model resolved and pulled if need be, and checked to fit before
    anything is loaded."""
    from roost.machine import hardware
    from roost.models import catalog, loading

    ref = catalog.resolve(args.model)
    offload = loading.can_offload()
    loading.check_gpu_layers(args.gpu_layers, offload)  # before any download
    machine = hardware.detect(gpus=offload)
    engine = loading.engine_for(args.engine, ref, machine)
    can_ask = sys.stdin is not None and sys.stdin.isatty()
    if engine == "mlx":
        path = _mlx_folder(ref, machine, args.ctx, yes=args.yes, can_ask=can_ask)
        name, plan, option = loading.plan_mlx(path, machine, args.ctx)
        return path, name, plan, engine, option
    path = _model_file(ref, machine, args.ctx, yes=args.yes, can_ask=can_ask)
    info, plan, option = loading.plan(path, machine, offload, args.ctx, args.gpu_layers, args.threads)
    return path, info.name, plan, engine, option


def cmd_chat(args) -> int:
    from roost.backends import load
    from roost.backends.base import Params
    from roost.tui.app import RoostApp

    params = Params(temperature=args.temperature, seed=args.seed)
    if args.model is None and not args.remote:
        from roost.machine import hardware
        from roost.models import loading

        offload = loading.can_offload()
        loading.check_gpu_layers(args.gpu_layers, offload)
        app = RoostApp(params=params, system=args.system, machine=hardware.detect(gpus=offload),
                       load_options={"ctx": args.ctx, "gpu_layers": args.gpu_layers, "threads": args.threads})
    elif args.remote:  # connected before the app opens: an unreachable server is one line here
        remote = _connect(args)
        app = RoostApp(lambda: remote, f"{remote.model} at {remote.host}", params, system=args.system)
    else:
        path, name, plan, engine, _ = _loading_plan(args)
        app = RoostApp(lambda: load(path, plan, engine=engine, isolated=True), name, params, system=args.system)
    app.run()
    return 0


def cmd_serve(args) -> int:
    import ipaddress
    import os

    from roost.serve import server
    from roost.backends import load

    api_key = _api_key(args)
    sock = server.listen(args.host, args.port)  # a taken port is said before minutes of loading
    path, _, plan, engine_name, _ = _loading_plan(args)
    engine = load(path, plan, engine=engine_name, isolated=True)
    given = args.model
    model_id = args.name or (os.path.basename(os.path.normpath(given)).removesuffix(".gguf")
                             if os.path.exists(given) else given)
    app = server.Server(engine, model_id, api_key=api_key, queue=args.queue)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not api_key:
        print(f"roost: warning: anyone who can reach {args.host} can use this server; "
              "add --api-key (or set ROOST_API_KEY)", file=sys.stderr)
    info = engine.info()
    print(f"roost: serving {model_id} ({info.engine} on {info.device}, context {info.n_ctx}) at "
          f"{server.url(sock)}/v1{' · API key required' if api_key else ''} · Ctrl-C stops", file=sys.stderr, flush=True)
    code = 0
    try:
        server.run(app, sock)
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down cleanly
        code = EXIT_INTERRUPTED
    finally:
        engine.close()
    print("roost: server stopped", file=sys.stderr)
    return code


def cmd_bench(args) -> int:
    import time

    from roost import report
    from roost.measure import bench, results
    from roost.backends import load
    from roost.backends.base import Cancel

    if args.history:
        records = results.past("bench", args.model)
        if args.json:
            print(json.dumps(records, indent=2))
        elif not records:
            print("no benchmarks yet (roost bench MODEL)" + (f" matching {args.model!r}" if args.model else ""))
        else:
            print(report.bench_history(records))
        return 0
    if args.remote:
        engine = _connect(args)
        name, load_s, ceiling = f"{engine.model} at {engine.host}", None, None
    else:
        if args.model is None:
            raise UsageError("give a model: roost bench MODEL (or --remote URL, or --history)")
        args.ctx = args.ctx or args.pp + args.tg + 64  # room for the runs, and no more memory than they need
        path, name, plan, engine_name, option = _loading_plan(args)
        loading = time.perf_counter()
        engine = load(path, plan, engine=engine_name)
        load_s, ceiling = time.perf_counter() - loading, option.ceiling_tps
    cancel = Cancel()
    try:
        with _first_interrupt_cancels(cancel):
            result = bench.run(engine, args.pp, args.tg, args.repetitions, model=name, load_s=load_s,
                               ceiling_tps=ceiling, cancel=cancel,
                               on_step=None if args.json else lambda step: print(f"  {step}…", file=sys.stderr))
    finally:
        engine.close()
    kept = results.remember("bench", result.as_dict())
    print(json.dumps(result.as_dict(), indent=2) if args.json else report.bench(result))
    if not args.json:
        print(f"kept in {kept}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from roost import report
    from roost.measure import results

    if args.history:
        records = results.past("eval", " ".join(args.models) or None)
        scored = results.past("perplexity", " ".join(args.models) or None)
        if args.json:
            print(json.dumps({"eval": records, "perplexity": scored}, indent=2))
        elif not records and not scored:
            print("no evaluations yet (roost eval MODEL ...)")
        else:
            print("\n\n".join(t for t in (records and report.eval_history(records),
                                            scored and report.perplexity_history(scored)) if t))
        return 0
    if not args.models:
        raise UsageError("give one or more models: roost eval MODEL [MODEL ...] (or --history)")
    if args.ppl:
        set_only = [flag for flag, given in (("--set", args.set), ("--limit", args.limit), ("--answers", args.answers),
                                             ("--golden", args.golden or args.golden_update)) if given]
        if set_only:
            raise UsageError(f"{set_only[0]} goes with an eval set, not with --ppl")
        return _eval_perplexity(args)
    if args.chunks:
        raise UsageError("--chunks goes with --ppl")
    return _eval_set(args)


def _eval_models(args, ctx: int | None):
    """Each model named, checked (found, pulled, planned to fit) before any is loaded, then
    loaded in turn, each in a process of its own, and closed before the next (which gives
    all its memory back): yields (the name shown, path, engine, load seconds, crash); path
    is None for a server; engine is None, and crash the EngineCrashed, where the engine
    crashed as it loaded."""
    import time

    from roost.backends import connect, load
    from roost.errors import EngineCrashed

    prepared = []
    from roost.report import labels

    for spec, name in zip(args.models, labels(args.models)):
        if spec.startswith(("http://", "https://")):
            prepared.append((spec, name, None, None, None))
        else:
            path, _, plan, engine_name, _ = _loading_plan(argparse.Namespace(**{**vars(args), "model": spec, "ctx": ctx}))
            prepared.append((spec, name, path, plan, engine_name))
    for spec, name, path, plan, engine_name in prepared:
        started = time.perf_counter()
        try:
            engine = (connect(spec, None, _api_key(args)) if path is None
                      else load(path, plan, engine=engine_name, isolated=True))
        except EngineCrashed as crash:
            yield name, path, None, None, crash
            continue
        try:
            yield name, path, engine, time.perf_counter() - started, None
        finally:
            engine.close()


def _crashed(name: str, why: str) -> None:
    print(f"roost: {name}: {why}; left out, going on", file=sys.stderr, flush=True)


def _progress(args, text: str) -> None:
    if not args.json:
        print(f"  {text}", file=sys.stderr, flush=True)


def _eval_set(args) -> int:
    from dataclasses import asdict

    from roost import report
    from roost.measure import eval_set, evaluate, golden, results
    from roost.backends.base import Cancel

    set_name, items = eval_set.load(args.set)  # a bad line is found before any model loads
    items = items[: args.limit]
    runs, checks = [], {}
    cancel = Cancel()
    with _first_interrupt_cancels(cancel):
        for name, path, engine, load_s, crash in _eval_models(args, args.ctx):
            if crash is not None:
                run = evaluate.ModelResult(name, "?", "?", set_name, crashed=str(crash))
            else:
                _progress(args, f"{name}: {len(items)} items…")
                run = evaluate.run(engine, items, model=name, set_name=set_name, load_s=load_s, cancel=cancel)
            runs.append(run)
            if run.crashed:
                _crashed(name, run.crashed)
            elif args.golden or args.golden_update:
                model_id = golden.identity(path) if path else f"{engine.url} {engine.model}"
                checks[id(run)] = _golden(args, model_id, run, items, engine.info())
    finished = [r for r in runs if not r.crashed]  # a crashed model's answers stop short: not compared
    changes = [evaluate.changes(finished[0], r) for r in finished[1:]]
    for run in finished:
        results.remember("eval", run.as_dict(answers=False))
    code = 1 if len(finished) < len(runs) else 0
    if args.json:
        models = [r.as_dict() for r in runs]
        for model, run in zip(models, runs):
            if id(run) in checks:
                model["golden"] = checks[id(run)]
        print(json.dumps({"set": set_name, "items": len(items), "models": models,
                          "changes": [asdict(c) for c in changes]}, indent=2, ensure_ascii=False))
        return code
    if args.answers:
        for run in finished:
            print(report.answers(run, items) + "\n")
    if finished:
        print(report.evaluation(finished, changes, set_name))
    for run in runs:
        if run.crashed:
            print(f"{run.model}: left out: {run.crashed}")
    return code


def _golden(args, model_id: str, run, items, info) -> dict:
    """Store the answers as golden, or compare them with those stored; drift is a warning."""
    from roost import report
    from roost.measure import golden

    old = None if args.golden_update else golden.stored(model_id, run)
    if old is None:
        where = golden.record(model_id, run, items, info)
        if not args.json:
            print(f"roost: golden outputs of {run.model} stored in {where}", file=sys.stderr)
        return {"stored": where}
    drift = golden.compare(old, run, items)
    if not args.json:
        if drift.changed or drift.missing or drift.new or drift.reworded:
            print(report.drift(run.model, drift, golden.diff), file=sys.stderr)
        else:
            print(f"roost: {run.model} gives its golden outputs, all {len(run.answers)} of them", file=sys.stderr)
    return {"changed": [{"id": i, "golden": old_text, "now": new} for i, old_text, new in drift.changed],
            "missing": drift.missing, "new": drift.new, "reworded": drift.reworded, "recorded": drift.recorded}


def _eval_perplexity(args) -> int:
    from roost import report
    from roost.measure import perplexity, results
    from roost.backends.base import Cancel
    from roost.errors import EngineCrashed

    servers = [m for m in args.models if m.startswith(("http://", "https://"))]
    if servers:
        raise UsageError(f"{servers[0]}: perplexity needs the model's whole distribution at every position, which "
                         "a server does not send; run it on the machine that holds the model")
    try:
        with open(args.ppl, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"no text file at {args.ppl}") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UsageError(f"{args.ppl} is not a UTF-8 text file") from None
    ctx = args.ctx or PPL_CTX
    scores, reference, crashed = [], None, 0
    cancel = Cancel()
    try:
        with _first_interrupt_cancels(cancel):
            for name, _, engine, _, crash in _eval_models(args, ctx):
                try:
                    if crash is not None:
                        raise crash
                    score, kept = perplexity.score(
                        engine, text, ctx, model=name, text_name=args.ppl, limit=args.chunks, reference=reference,
                        keep=reference is None and len(args.models) > 1, cancel=cancel,
                        on_chunk=lambda i, n, name=name: _progress(args, f"{name}: chunk {i + 1}/{n}…"))
                except EngineCrashed as e:  # the next model scores (and is the reference, if none is yet)
                    _crashed(name, str(e))
                    crashed += 1
                    continue
                reference = reference or kept
                scores.append(score)
    finally:
        if reference is not None:
            reference.close()
    for score in scores:
        results.remember("perplexity", score.as_dict())
    if scores or args.json:
        print(json.dumps([s.as_dict() for s in scores], indent=2) if args.json else report.perplexity(scores))
    return 1 if crashed else 0


def cmd_fit(args) -> int:
    from roost import report
    from roost.machine import fit, hardware
    from roost.models import catalog, gguf_info, library, loading

    machine = hardware.detect()
    if args.gpu and not (machine.gpus or machine.apple):
        why = "; ".join(machine.notes) or "none was found"
        raise UsageError(f"--gpu asked for, but this machine has no usable GPU ({why})")
    refs = [catalog.resolve(m) for m in args.models]
    if all(r.path for r in refs):
        infos = [gguf_info.read(r.path) for r in refs]
        shape = fit.Shape.from_gguf(infos[0])
        for other in infos[1:]:
            if (other.architecture, other.n_layer, other.n_embd) != (infos[0].architecture, shape.n_layer, shape.n_embd):
                raise UsageError(f"{other.path} is a different model from {infos[0].path}: give quants of one model")
        name, limit = infos[0].name, infos[0].n_ctx_train
        quants = [fit.Quant.from_gguf(i, shape) for i in infos]
    elif len(refs) == 1:
        ref = refs[0]
        if ref.model:
            shape, quants, name = ref.model.shape(), ref.model.quants(), ref.model.name
        else:
            files = catalog.list_repo_gguf(ref.repo)
            shape = library.remote_shape(ref.repo, min(files, key=lambda f: f.size).files[0])
            quants, name = [fit.Quant.from_size(shape, f.quant, f.size) for f in files], ref.repo
        limit = shape.n_ctx_train
    else:
        raise UsageError("give one catalog name or Hub repo, or several local .gguf files of one model")
    n_ctx = loading.context(args.ctx, name, limit)
    ranking = fit.rank(shape, quants, n_ctx, machine, use_gpu=not args.cpu)
    # A catalog model may run on MLX instead of these GGUFs: which engine, and why.
    engine = loading.choose_engine(None, refs[0], machine, n_ctx) if refs[0].model and not args.cpu else None
    if args.json:
        b = ranking.budget
        print(json.dumps({
            "model": name,
            "n_ctx": n_ctx,
            "budget": {"device": b.device, "device_name": b.device_name, "gpu_bytes": b.gpu_bytes,
                       "host_bytes": b.host_bytes, "margin": b.margin_note},
            "options": [o.as_dict() for o in ranking.options],
            "pick": ranking.pick.quant.name if ranking.pick else None,
            "reason": ranking.reason,
            "engine": engine.as_dict() if engine else None,
        }, indent=2))
    else:
        print(report.ranking(name, shape, ranking) + (f"\n{engine.line}" if engine else ""))
    return 0 if ranking.pick or engine and engine.name == "mlx" else 1


def _model_file(ref, machine, ctx: int | None, *, yes: bool, can_ask: bool) -> str:
    """A local GGUF for a model reference, downloading it first if need be (asking,
    unless --yes)."""
    from roost import report
    from roost.models import library

    if ref.path:
        return ref.path
    if ref.repo:  # outside the catalog: what is downloaded needs no network to find
        have = library.find_downloaded(ref.text)
        if have:
            return max(have, key=lambda d: d.size).path
    choice = library.choose(ref, machine, ctx or DEFAULT_CTX)
    path = library.cached_path(choice.repo_id, choice.file)
    if path:
        return path
    _ask_to_download(ref.text, f"{choice.repo_id}/{choice.file.file} ({report.size(choice.file.size)})", yes, can_ask)
    return _pull(lambda **kw: library.pull(choice.repo_id, choice.file, **kw))


def _mlx_folder(ref, machine, ctx: int | None, *, yes: bool, can_ask: bool) -> str:
    """A local MLX model folder for a reference, pulled first if need be."""
    from roost.models import mlx_models

    if ref.path:
        return ref.path
    repo = ref.repo or mlx_models.pick(ref.model, machine, ctx or DEFAULT_CTX, ref.quant)[0]
    folder = mlx_models.cached_dir(repo)
    if folder:
        return folder
    _ask_to_download(ref.text, f"the MLX build {repo}", yes, can_ask)
    return _pull(lambda **kw: mlx_models.pull(repo, **kw))


def _ask_to_download(text: str, what: str, yes: bool, can_ask: bool) -> None:
    if yes:
        return
    if not can_ask:
        raise UsageError(f"{text} is not downloaded yet: run `roost pull {text}` first, or add --yes")
    if not _confirm(f"{text} is not downloaded yet. Download {what} now?"):
        raise UsageError("not downloaded; nothing was changed")


def _confirm(question: str) -> bool:
    """Ask on the terminal; Enter means yes."""
    print(f"{question} [Y/n] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("", "y", "yes")


def _pull(fetch) -> str:
    """Run a download with a progress bar on stderr; the first Ctrl-C cancels it."""
    from roost.backends.base import Cancel

    cancel = Cancel()
    with _download_bar() as on_progress, _first_interrupt_cancels(cancel):
        return fetch(on_progress=on_progress, cancel=cancel)


class _download_bar:
    """rich's progress bar on stderr, fed by download Progress events."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar.start()
        self.tasks = {}
        return self.update

    def update(self, p) -> None:
        key = (p.filename, p.phase)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{p.phase} {p.filename}", total=p.total)
        self.bar.update(self.tasks[key], completed=p.done, total=p.total)

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def cmd_pull(args) -> int:
    from roost import report
    from roost.machine import hardware
    from roost.models import catalog, library, loading, mlx_models

    machine = hardware.detect()
    ref = catalog.resolve(args.model)
    if ref.path:
        raise UsageError(f"{args.model} is a local file: nothing to pull")
    engine = loading.choose_engine(args.engine, ref, machine, args.ctx)
    print(engine.line, file=sys.stderr)
    if engine.name == "mlx":
        if ref.model is not None and not ref.quant:  # the MLX builds ranked, as the GGUFs are below
            ranking = mlx_models.rank(ref.model, machine, args.ctx or DEFAULT_CTX)
            print(report.ranking(f"{ref.model.name} (MLX builds)", ref.model.shape(), ranking), file=sys.stderr)
        can_ask = sys.stdin is not None and sys.stdin.isatty()
        # as for a GGUF below: asked at a terminal, else pulled (pulling is what was asked for)
        print(_mlx_folder(ref, machine, args.ctx, yes=args.yes or not can_ask, can_ask=can_ask))
        return 0
    choice = library.choose(ref, machine, args.ctx or DEFAULT_CTX)
    if choice.ranking is not None:
        print(report.ranking(ref.model.name if ref.model else ref.repo, choice.shape, choice.ranking), file=sys.stderr)
    have = library.cached_path(choice.repo_id, choice.file)
    if have:
        print(have)
        return 0
    if not args.yes and sys.stdin is not None and sys.stdin.isatty():
        if not _confirm(f"Download {choice.repo_id}/{choice.file.file} ({report.size(choice.file.size)})?"):
            return 1
    print(_pull(lambda **kw: library.pull(choice.repo_id, choice.file, **kw)))
    return 0


def cmd_ls(args) -> int:
    from roost import report
    from roost.machine import fit, hardware
    from roost.models import gguf_info, library
    from roost.errors import ModelFileError

    have = library.downloaded()
    machine = hardware.detect()
    rows = [["model", "quant", "size", "fits now", "path"]]
    out = []
    for d in have:
        try:
            info = gguf_info.read(d.path)
            _, ranking = fit.for_gguf(info, min(DEFAULT_CTX, info.n_ctx_train or DEFAULT_CTX), machine)
            fits = report.fits(ranking.options[0], info.n_layer)
        except ModelFileError:
            fits = "damaged"
        name = d.name or d.repo_id
        out.append({"name": name, "repo": d.repo_id, "file": d.filename, "quant": d.quant, "size": d.size,
                    "fits": fits, "path": d.path})
        rows.append([name, d.quant, report.size(d.size), fits, d.path])
    if args.json:
        print(json.dumps(out, indent=2))
    elif not have:
        print("no models downloaded yet (roost pull NAME; roost search TEXT lists the catalog)")
    else:
        print(report.table(rows, right={2}))
    return 0


def cmd_rm(args) -> int:
    from roost import report
    from roost.models import library

    for d in library.remove(args.model):
        print(f"removed {d.repo_id}/{d.filename} ({report.size(d.size)})")
    return 0


def cmd_search(args) -> int:
    from roost import report
    from roost.machine import hardware
    from roost.models import listing

    offers = [o for o in listing.catalog_offers(hardware.detect(), args.ctx or DEFAULT_CTX) if o.matches(args.text)]
    if args.json:
        print(json.dumps([{"name": o.name, "family": o.family, "params": o.params, "kind": o.kind,
                           "pick": o.pick.quant.name if o.pick else None, "fits": report.best_fit(o),
                           "ceiling_tps": o.pick.ceiling_tps if o.pick else None} for o in offers], indent=2))
    elif not offers:
        print(f"nothing in the catalog matches {' '.join(args.text)!r}")
        return 1
    else:
        rows = [["name", "family", "params", "kind", "best here", "fits", "ceiling"]]
        rows += [[o.name, o.family, report.params(o.params), o.kind, o.pick.quant.name if o.pick else "—",
                  report.best_fit(o), report.ceiling(o.pick)] for o in offers]
        print(report.table(rows))
    return 0


def cmd_doctor(args) -> int:
    from roost import report
    from roost.machine import bandwidth, doctor, hardware

    if args.measure:
        gbs = bandwidth.measure(hardware.default_threads())
        where = bandwidth.save_measured(gbs)
        print(f"measured CPU memory bandwidth: {gbs:.1f} GB/s (kept in {where})", file=sys.stderr)
    tested = doctor.self_test(fresh=args.self_test)  # kept per build: it runs once for each
    if args.self_test:
        if not tested.ok:
            raise RoostError(tested.line())
        print(tested.line())
        return 0
    machine, cuda_toolkit = doctor.here()
    data = doctor.report(machine, cuda_toolkit, tested)
    print(json.dumps(data, indent=2) if args.json else report.doctor(data, machine))
    return 0


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
