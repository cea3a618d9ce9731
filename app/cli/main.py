"""The `roost` command line: the parser, and main(), which runs a command's handler.

Start-up matters for one-shot prompts, so the cli package imports only the standard
library (and roost's own light modules) at load; each command imports what it needs when
it runs. The handlers live one module per group of commands: run.py (run, chat),
models.py (pull, ls, rm, search, fit), serve.py, ps.py (ps, stop), measure.py (bench, eval),
doctor.py; terminal.py holds what they share at the terminal.
"""

from __future__ import annotations

import argparse
import sys

from roost import __version__, sampling
from roost.backends import ENGINES
from roost.cli.doctor import cmd_doctor
from roost.cli.history import cmd_history
from roost.cli.measure import PPL_CTX, cmd_bench, cmd_eval
from roost.cli.models import cmd_fit, cmd_ls, cmd_pull, cmd_rm, cmd_search
from roost.cli.ps import cmd_ps, cmd_stop
from roost.cli.run import cmd_chat, cmd_run
from roost.cli.serve import cmd_serve
from roost.cli.terminal import EXIT_INTERRUPTED, guarded
from roost.errors import RoostError, UsageError
from roost.models.loading import DEFAULT_CTX

DEFAULT_PORT = 8080
# Help for what several commands take, written once so that it reads the same everywhere.
MODEL_HELP = ('a catalog name (roost search lists them), optionally NAME:QUANT (NAME:Q4_K_M, NAME:4bit); '
              'a Hugging Face repo, owner/repo or owner/repo:file.gguf; a .gguf file; an MLX model folder; '
              "another app's model by its name there (ollama:llama3.2:3b, lmstudio:OWNER/REPO, llama.cpp:FILE.gguf; "
              'roost ls lists them); or "demo", the bundled SmolLM2-135M')
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
SEED_HELP = "sampling seed, for repeatable answers (default: a random one each time)"
HISTORY_HELP = "show the earlier results kept on this machine instead, matching MODEL if given (default: run)"
THINK_HELP = ("a reasoning model's thinking: on, off, or an effort (low, medium, high) for a model that takes one "
              "(gpt-oss) (default: the model's own)")
THINK_BUDGET_HELP = ("at most N tokens of thinking: then roost closes the thought and the model answers "
                     "(default: {})")
KV_HELP = ("the KV cache's type: f16, q8_0 (about half its memory) or q4_0 (about a quarter), with flash "
           "attention (default: f16, or q8_0 where only that lets the context fit here, as roost fit says)")
FLASH_ATTN_HELP = ("llama.cpp's flash attention: on, off, or auto (default: auto: on with a GPU and on the CPU, "
                   "where it keeps the compute buffer small at long contexts; always on with a quantized --kv)")
REMOTE_HELP = ("use a model served elsewhere over the OpenAI API (roost serve, llama-server, vLLM, Ollama), "
               "e.g. http://127.0.0.1:8080 (default: a model on this machine)")


def _whole_number(low: int, bound: str):
    """argparse's type for a whole number of at least `low`; `bound` says it in words."""
    def read(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value
    return read


_positive_int = _whole_number(1, "at least 1")
_budget = _whole_number(0, "0 or more")


def _port(text: str) -> int:
    value = _whole_number(0, "0 to 65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, not {value}")
    return value


def _serve_value(parse):
    """An argparse type from one of roost serve's parsers (pool.py: imported when used)."""
    def read(text: str):
        from roost.serve import pool

        try:
            return getattr(pool, parse)(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return read


def _setting_type(setting: sampling.Setting):
    """argparse's type for a sampling setting: its bounds, as the chat app and the API have them."""
    def read(text: str):
        try:
            return setting.read(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return read


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see: {self.prog} --help)")


class _CommandParser(_Parser):
    """A command's parser, which takes options before, between and after its positionals, as
    people type them: `roost run MODEL --engine llama PROMPT`. Plain argparse stops filling
    positionals at the first option, and its intermixed parsing refuses a parser with
    subcommands, so each command's parser parses intermixed, and the top level as usual.
    After `--`, everything is positional: a prompt that starts with "-" goes there."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back here, twice
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _ctx_option(command, default: str = CTX_DEFAULT, more: str = "") -> None:
    command.add_argument("-c", "--ctx", type=_positive_int, metavar="N",
                         help=f"context window in tokens, which memory is planned for (default: {default}){more}")


def _engine_option(command) -> None:
    command.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)


def _yes_option(command) -> None:
    command.add_argument("-y", "--yes", action="store_true", help=YES_HELP)


def _min_speed_option(command) -> None:
    from roost.machine.fit import MIN_TPS  # standard library only: light enough for every start

    command.add_argument("--min-speed", type=_tok_per_s, default=MIN_TPS, metavar="TOK_S",
                         help="the slowest predicted decode (tok/s) a pick may have; a slower one is passed over "
                         f"as too slow, or given with a warning for a model named on its own (default: {MIN_TPS:g})")


def _tok_per_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens a second") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


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


def _kv_options(command, several: bool = False) -> None:
    """--kv and --flash-attn: the KV cache's type and how attention runs. several: --kv
    takes a list (eval compares each against the first)."""
    from roost.machine.fit import KV_TYPES  # standard library only: light enough for every start

    if several:
        command.add_argument("--kv", type=_kv_list, metavar="TYPE[,TYPE...]",
                             help=f"{KV_HELP}; several, comma-separated (f16,q8_0,q4_0), run each model with each, "
                             "and compare each with the first")
    else:
        command.add_argument("--kv", choices=KV_TYPES, help=KV_HELP)
    command.add_argument("--flash-attn", choices=("auto", "on", "off"), help=FLASH_ATTN_HELP)


def _kv_list(text: str) -> list[str]:
    from roost.machine.fit import KV_TYPES

    types = [t.strip() for t in text.split(",")]
    wrong = [t for t in types if t not in KV_TYPES]
    if wrong:
        raise argparse.ArgumentTypeError(f"{wrong[0]!r} is not a KV cache type ({', '.join(KV_TYPES)})")
    return types


def _sampling_options(command) -> None:
    command.add_argument("-s", "--system", metavar="TEXT", help=SYSTEM_HELP)
    for s in sampling.SETTINGS:
        command.add_argument(*s.flags, dest=s.name, type=_setting_type(s), default=s.default, metavar=s.metavar,
                             help=f"{s.help}, from {s.low:g} to {s.high:g} (default: {s.default:g})")
    command.add_argument("--seed", type=int, metavar="N", help=SEED_HELP)


def _thinking_options(command, budget: str = "no limit") -> None:
    from roost.backends.reasoning import THINK_SETTINGS

    command.add_argument("--think", choices=THINK_SETTINGS, help=THINK_HELP)
    command.add_argument("--think-budget", type=_budget, metavar="N", help=THINK_BUDGET_HELP.format(budget))


def _remote_options(command) -> None:
    command.add_argument("--remote", metavar="URL", help=REMOTE_HELP)
    _api_key_option(command)


def _ssh_options(command) -> None:
    command.add_argument("--ssh", metavar="[USER@]HOST",
                         help="start roost serve on HOST over ssh (your ssh config and keys; $ROOST_SSH_COMMAND "
                         "replaces ssh) and use MODEL there through the same connection; the server stops when this "
                         "ends (default: a model on this machine)")
    command.add_argument("--ssh-roost", metavar="PATH",
                         help="with --ssh, the roost command on HOST, as its shell reads it (default: roost, found by a "
                         "login shell's PATH)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roost", description="Run open LLMs on your own machine. Without a command: roost chat.")
    parser.add_argument("--version", action="version", version=f"roost {__version__}",
                        help="print roost's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

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
    run.add_argument("--schema", metavar="FILE|JSON",
                     help="answer with JSON that matches this JSON schema (a file, or the schema itself): stdout is "
                     "the JSON alone; a reasoning model does not think (default: free text)")
    _sampling_options(run)
    _thinking_options(run)
    run.add_argument("--hide-thinking", action="store_true",
                     help="show a reasoning model's thought nowhere (default: dimmed on stderr when that is a "
                     "terminal, nowhere when it is not; stdout has only the answer either way)")
    _ctx_option(run)
    run.add_argument("--stats", action="store_true",
                     help="print one line to stderr: prompt and generation tok/s, time to first token, peak memory, "
                     "context used, thinking and answer apart (default: off)")
    _json_option(run)
    _local_engine_options(run)
    _kv_options(run)
    _remote_options(run)
    _ssh_options(run)
    run.add_argument("--no-server", action="store_true",
                     help="load the model in this process even when a roost server running here serves it "
                     "(default: answer through that server, where it has or can load the model and no option "
                     "only a local load takes is given)")
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
    _min_speed_option(fit)
    _kv_options(fit)
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
    _min_speed_option(pull)
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
    _min_speed_option(search)
    search.set_defaults(handler=cmd_search)

    chat = commands.add_parser("chat", help="chat in the terminal app (the default command)",
                               description="Open the chat app on a model; without one, pick the engine and model in the app.")
    chat.add_argument("model", metavar="MODEL", nargs="?",
                      help=f"{MODEL_HELP}; with --remote, the server's model (default: pick one in the app)")
    _sampling_options(chat)
    _thinking_options(chat)
    _ctx_option(chat)
    _local_engine_options(chat)
    _kv_options(chat)
    _remote_options(chat)
    _ssh_options(chat)
    chat.set_defaults(handler=cmd_chat)

    serve = commands.add_parser(
        "serve", help="serve models over an OpenAI-compatible HTTP API",
        description="Answer OpenAI API requests: /v1/chat/completions, /v1/completions, /v1/models, /health, "
        "/metrics, and /api/ps and /api/stop. A request's model is loaded when it names one on disk, each in its "
        "own process, and unloaded when idle or to make room; MODEL is loaded first. One answer at a time per "
        "model; others wait in a queue.")
    serve.add_argument("model", metavar="MODEL", nargs="?",
                       help=f"{MODEL_HELP}, loaded before serving and kept (default: none; requests load theirs)")
    serve.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every network)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="N",
                       help=f"port to listen on, 0 for any free one (default: {DEFAULT_PORT})")
    serve.add_argument("--keep-alive", type=_serve_value("parse_duration"), default=argparse.SUPPRESS,
                       metavar="DURATION",
                       help="unload a model idle this long: 30s, 5m, 1h, 0 (right after each answer), -1 (never); a "
                       "request's keep_alive field sets its model's (default: 5m for models loaded on demand; MODEL "
                       "stays loaded)")
    serve.add_argument("--max-memory", type=_serve_value("parse_size"), metavar="SIZE",
                       help="the most memory the loaded models may plan to use together, of each of VRAM and RAM: "
                       "300MB, 8GiB (default: what `roost fit` finds free here at start)")
    serve.add_argument("--models-max", type=_positive_int, metavar="N",
                       help="the most models loaded at once (default: as many as fit in memory)")
    serve.add_argument("--pull", action="store_true",
                       help="download a model a request names that is not on disk, as roost pull would (default: "
                       "404 model_not_found, saying to run roost pull)")
    _api_key_option(serve)
    serve.add_argument("--api-key-stdin", action="store_true",
                       help="read the API key from standard input's first line, out of sight of ps, and stop when "
                       "standard input closes, as roost chat --ssh starts it (default: --api-key)")
    serve.add_argument("--name", metavar="ID",
                       help="the model's id in the API (default: MODEL as given, or the file's name)")
    serve.add_argument("--queue", type=_positive_int, default=16, metavar="N",
                       help="requests that may wait while one is answered; more get 503 (default: 16)")
    _thinking_options(serve)  # the defaults; a request may ask otherwise
    serve.add_argument("--truncate", action="store_true",
                       help="a chat longer than the context leaves out its oldest turns (the system prompt and the "
                       "latest kept) and says how many in the X-Roost-Dropped-Turns header, as the chat app does "
                       "(default: refused with 400 context_length_exceeded, as OpenAI's API does)")
    _ctx_option(serve)
    _local_engine_options(serve)
    _kv_options(serve)
    serve.set_defaults(handler=cmd_serve)

    ps = commands.add_parser("ps", help="the models the roost servers running here have loaded",
                             description="For each roost server running on this machine (found by the state file "
                             "serve writes in the data folder): its models, engine, device, memory in use and "
                             "planned, time idle, when it unloads, and state.")
    _json_option(ps)
    ps.set_defaults(handler=cmd_ps)

    stop = commands.add_parser("stop", help="unload a model from the roost server running here",
                               description="Unload MODEL now from the roost server on this machine that has it "
                               "loaded; its memory is freed, and the next request for it loads it again.")
    stop.add_argument("model", metavar="MODEL", help="the model's id, as roost ps shows it")
    stop.set_defaults(handler=cmd_stop)

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
    bench.add_argument("-d", "--depth", type=_budget, default=0, metavar="N",
                       help="measure both with N tokens already in the context, as llama-bench's -d: decode at 16k "
                       "is what a long chat feels like (default: 0)")
    _ctx_option(bench, default="enough for the runs, DEPTH + PP + TG + 64")
    _local_engine_options(bench)
    _kv_options(bench)
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
    # evaluate.DEFAULT_THINK_BUDGET, not imported: it would load the eval set's module for every command.
    _thinking_options(evaluate, budget="512 for a model that thinks, added to each item's max_tokens")
    _ctx_option(evaluate, more=f"; with --ppl, tokens per chunk (default: {PPL_CTX})")
    _local_engine_options(evaluate)
    _kv_options(evaluate, several=True)
    _api_key_option(evaluate)
    _json_option(evaluate)
    evaluate.add_argument("--history", action="store_true", help=HISTORY_HELP)
    evaluate.add_argument("--from-history", action="store_true",
                          help="build an eval set from the answers marked good or bad in the chat app, write it and "
                          "exit; run it with roost eval MODEL --set FILE (default: off)")
    evaluate.add_argument("--out", metavar="FILE",
                          help="with --from-history, where the set goes (default: from-history.jsonl in roost's "
                          "data folder)")
    evaluate.set_defaults(handler=cmd_eval)

    conversations = commands.add_parser(
        "history", help="saved conversations: list, show, export, remove",
        description="The conversations the chat app saved, the most recent first: a short ID, date, model, turns "
        "and first question. show ID: the questions, thoughts (dimmed), answers and each answer's stats. "
        "export ID: Markdown (model, settings, stats) or JSON (OpenAI-style messages, settings, stats, marks). "
        "rm ID: gone for good. An ID is any unique start of the one listed, or of the file's name.")
    conversations.add_argument("action", metavar="ACTION", nargs="?", choices=("show", "export", "rm"),
                               help="show, export or rm (default: list them)")
    conversations.add_argument("id", metavar="ID", nargs="?", help="the conversation, as roost history lists it")
    conversations.add_argument("--format", choices=("md", "json"),
                               help="with export: md (Markdown) or json (default: md)")
    conversations.add_argument("-o", "--output", metavar="FILE",
                               help="with export: write it to FILE (default: standard output)")
    conversations.add_argument("-y", dest="yes", action="store_true",
                               help="with rm: remove without asking (default: ask at a terminal, refuse elsewhere)")
    _json_option(conversations)
    conversations.set_defaults(handler=cmd_history)

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
        return guarded(lambda: _dispatch(args))
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


if __name__ == "__main__":
    sys.exit(main())
