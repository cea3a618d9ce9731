"""`roost --help` says what every option does, and the README's option tables agree with it."""

import argparse
import glob
import math
import os
import re

import pytest

from conftest import ROOT
from roost import sampling
from roost.backends.base import Params
from roost.cli import build_parser
from roost.errors import UsageError

# Options several commands take: each reads the same wherever it appears (up to its default,
# which may differ: bench's context is sized to its runs).
SHARED = ("--ctx", "--engine", "--yes", "--threads", "--gpu-layers", "--api-key", "--json", "--system",
          "--temperature", "--top-p", "--top-k", "--min-p", "--repeat-penalty", "--seed", "--remote", "--history")
# Commands that load a model, and what their MODEL must say it accepts.
LOADING = ("run", "chat", "serve", "bench", "eval")
MODEL_FORMS = ("catalog name", "NAME:QUANT", "Hugging Face repo", "owner/repo", "owner/repo:file.gguf", ".gguf file",
               "MLX model folder", '"demo"')


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **subparsers.choices}


def arguments(parser):
    """The options and positionals a user gives (not -h, not the subcommand itself)."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def name(action) -> str:
    return "/".join(action.option_strings) or action.metavar or action.dest


def test_every_option_and_positional_of_every_command_has_help():
    missing = [f"roost {cmd} {name(a)}".replace("  ", " ")
               for cmd, parser in commands().items() for a in arguments(parser)
               if not (a.help and a.help.strip() and a.help != argparse.SUPPRESS)]
    assert not missing, f"no help text: {', '.join(missing)}"


def test_every_option_that_takes_a_value_states_its_default():
    silent = [f"roost {cmd} {name(a)}" for cmd, parser in commands().items() for a in arguments(parser)
              if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._VersionAction)
              and "default" not in (a.help or "")]
    assert not silent, f"no default stated: {', '.join(silent)}"


def test_every_command_has_a_summary_and_a_description_and_its_help_prints():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in subparsers._choices_actions}
    for cmd, sub in subparsers.choices.items():
        assert summaries.get(cmd), f"roost {cmd} has no line in roost --help"
        assert sub.description, f"roost {cmd} --help has no description"
        assert "options:" in sub.format_help()  # help strings are %-formatted: a stray % would fail here


def test_shared_options_read_the_same_in_every_command():
    seen: dict[str, dict[str, str]] = {}
    for cmd, parser in commands().items():
        for a in arguments(parser):
            for flag in set(a.option_strings) & set(SHARED):
                seen.setdefault(flag, {})[cmd] = (a.help or "").split(" (default")[0]
    for flag in SHARED:
        assert len(seen.get(flag, {})) > 1, f"{flag} is no longer shared: take it out of SHARED"
        texts = set(seen[flag].values())
        assert len(texts) == 1, f"{flag} reads differently: {seen[flag]}"


@pytest.mark.parametrize("cmd", LOADING)
def test_model_says_everything_it_accepts(cmd):
    model = next(a for a in arguments(commands()[cmd]) if a.dest in ("model", "models"))
    for form in MODEL_FORMS:
        assert form in model.help, f"roost {cmd}'s MODEL help does not mention {form}: {model.help}"


# -- the README's option tables -------------------------------------------------------------

HEADING = re.compile(r"Options of `roost (\w+)`")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def option_tables() -> list[tuple[str, str, set[str]]]:
    """(file, command, the flags listed in the first column) for every Markdown table that
    follows a line naming "Options of `roost CMD`"."""
    found = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            heading = HEADING.search(line)
            if not heading:
                continue
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            flags = set()
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                first = re.split(r"(?<!\\)\|", lines[j].strip())[1]
                for code in re.findall(r"`([^`]*)`", first):  # the header and the |---| row hold no code
                    flags.update(FLAG.findall(code))
                j += 1
            found.append((os.path.relpath(path, ROOT), heading.group(1), flags))
    return found


def test_the_options_of_roost_run_are_in_a_table():
    tables = [(where, flags) for where, cmd, flags in option_tables() if cmd == "run"]
    assert tables, "no table follows \"Options of `roost run`\" in README.md or docs/*.md"
    assert all(flags for _, flags in tables), f"the table after \"Options of `roost run`\" lists no options: {tables}"


def test_option_tables_agree_with_the_parser():
    parsers = commands()
    for where, cmd, listed in option_tables():
        assert cmd in parsers, f"{where}: there is no `roost {cmd}`"
        options = {flag for a in arguments(parsers[cmd]) for flag in a.option_strings}
        assert not listed - options, f"{where}: `roost {cmd}` has no {', '.join(sorted(listed - options))}"
        assert not options - listed, f"{where}: the table of `roost {cmd}` lacks {', '.join(sorted(options - listed))}"


def test_options_may_come_anywhere_among_the_positionals():
    def parsed(*argv):
        return vars(build_parser().parse_args(argv))

    run = parsed("run", "demo", "hi", "--engine", "llama", "-n", "4")
    assert parsed("run", "demo", "--engine", "llama", "hi", "-n", "4") == run
    assert parsed("run", "--engine", "llama", "-n", "4", "demo", "hi") == run
    assert parsed("run", "demo", "-n", "4", "--", "--engine")["prompt"] == "--engine"  # after --, a prompt
    assert parsed("eval", "demo", "--limit", "2", "demo")["models"] == ["demo", "demo"]
    assert parsed("fit", "a.gguf", "--ctx", "512", "b.gguf")["models"] == ["a.gguf", "b.gguf"]
    assert parsed("search", "--json", "small", "--ctx", "512", "chat")["text"] == ["small", "chat"]
    with pytest.raises(UsageError, match="unrecognized arguments: more"):
        parsed("run", "demo", "hi", "-n", "4", "more")

# -- sampling: one set of bounds -------------------------------------------------------------


def just_above(setting):
    return setting.high + 1 if setting.kind is int else math.nextafter(setting.high, math.inf)


@pytest.mark.parametrize("setting", sampling.SETTINGS, ids=lambda s: s.name)
def test_a_sampling_bound_is_the_same_on_the_command_line_in_the_chat_app_and_the_api(setting):
    from roost.serve.openai_api import ApiError, chat_request
    from roost.tui.screens.settings import FIELDS, parse

    high, over = setting.high, just_above(setting)
    for cmd in ("run", "chat"):
        args = build_parser().parse_args([cmd, "demo", setting.flags[-1], str(high)])
        assert getattr(args, setting.name) == high
        with pytest.raises(UsageError, match=re.escape(setting.flags[-1])):
            build_parser().parse_args([cmd, "demo", setting.flags[-1], str(over)])

    form = {name: str(getattr(Params(), name) or "") for name, *_ in FIELDS}
    assert getattr(parse({**form, setting.name: str(high)}, Params()), setting.name) == high
    with pytest.raises(ValueError, match=f"^{re.escape(setting.label.split(' (')[0])}: "):
        parse({**form, setting.name: str(over)}, Params())

    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    assert getattr(chat_request({**body, setting.name: high}, "demo", 512).params, setting.name) == high
    with pytest.raises(ApiError) as refused:
        chat_request({**body, setting.name: over}, "demo", 512)
    assert refused.value.status == 400 and refused.value.param == setting.name
