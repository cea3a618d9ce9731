"""`roost run` sized to its input: a piped document longer than the default context gets
the context it needs (the demo model was trained on 8192 tokens), within what memory
allows here; what cannot be held is one line, said before anything is loaded."""

import io
import json
import os
import re
import sys

import pytest
from conftest import ROOT, one_line

from roost.cli.run import Shown
from roost.backends.base import Progress, Token

with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    README = f.read()
QUESTION = "\n\nWhat is this text about? Answer in one sentence."
LONG = (README * 4)[:15_000] + QUESTION  # ~5,100 tokens: more than the default 4096
TOO_LONG = (README * 10)[:30_000] + QUESTION  # ~10,000: more than the demo was trained on


def one_error_line(result, *needles) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roost: error: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow  # ~5,000 tokens read: a minute on a busy two-core machine
def test_a_document_longer_than_the_default_context_is_answered(demo_gguf, roost_here, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's, standing in for a terminal
    result = roost_here("run", demo_gguf, "-n", "4", "-t", "0", "--stats", input=LONG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    first, stats = result.stderr.split("\n")[:-1]
    # The prompt's reading on one line, rewritten, and cleared before the answer.
    *steps, cleared = first.split("\r")[1:]
    assert len(steps) >= 2 and all(re.fullmatch(r"reading [\d,]+ / [\d,]+ tokens( · [\d,]+ tok/s)?\x1b\[K", s)
                                   for s in steps), steps
    assert cleared.startswith("\x1b[K")
    raised = cleared.removeprefix("\x1b[K")
    n_ctx = int(re.search(r"context raised from 4,096 to ([\d,]+): the input is about [\d,]+ tokens", raised)
                .group(1).replace(",", ""))
    used, held = map(int, re.search(r"context (\d+)/(\d+)", stats).groups())
    prompt = int(re.search(r"prompt (\d+) tok", stats).group(1))
    assert held == n_ctx and 4096 < prompt < used <= n_ctx <= 8192


def test_json_says_the_context_was_raised_and_a_short_input_keeps_the_default(demo_gguf, roost_here):
    short = json.loads(roost_here("run", demo_gguf, "Say hi.", "-n", "2", "--json").stdout)
    assert short["context_raised"] is None and short["stats"]["n_ctx"] == 4096


def test_a_given_ctx_is_used_as_is(demo_gguf, roost_here):
    one_error_line(roost_here("run", demo_gguf, "--ctx", "1024", "-n", "4", input=README),
                   "the context holds 1024; shorten it or raise --ctx")


def test_an_input_longer_than_the_model_was_trained_on_is_one_line(demo_gguf, roost_here):
    one_error_line(roost_here("run", demo_gguf, "-n", "4", input=TOO_LONG), "was trained on up to 8,192: shorten it")


def test_what_memory_cannot_hold_says_what_fits(demo_gguf, roost_here, tmp_path):
    """A small box (tests/machines/tiny.json with less RAM free) that holds the default
    context (with a q8_0 KV cache, which the planner says it takes) but not the document's,
    even at q8_0."""
    with open(os.path.join(ROOT, "tests", "machines", "tiny.json")) as f:
        machine = json.load(f)
    machine["ram"][1] = 1_270_000_000
    path = tmp_path / "smaller.json"
    path.write_text(json.dumps(machine))
    line = one_line(roost_here("run", demo_gguf, "-n", "4", input=LONG, env={"ROOST_MACHINE": str(path)}),
                    "memory here holds a context of ")
    fits = int(re.search(r"--ctx (\d+) fits here", line).group(1))
    prompt = int(re.search(r"the input is about ([\d,]+) tokens", line).group(1).replace(",", ""))
    assert 4096 <= fits < prompt and fits % 256 == 0


def test_progress_is_shown_at_a_terminal_on_stats_only():
    def shown(progress: bool, terminal: bool) -> str:
        out, err = io.StringIO(), io.StringIO()
        err.isatty = lambda: terminal
        s = Shown(out, err, progress=progress)
        s.progress(Progress(512, 1000, 0, 0.5))
        s.end_progress()
        s.token(Token("Hi"))
        return err.getvalue()

    assert shown(True, True) == "\rreading 512 / 1,000 tokens · 1,024 tok/s\x1b[K\r\x1b[K"
    assert shown(True, False) == shown(False, True) == ""


@pytest.mark.slow
def test_an_mlx_folder_counts_as_its_gguf_does(demo_gguf, demo_mlx):
    """The same vocabulary, read from the GGUF by llama.cpp and from tokenizer.json."""
    from roost.models import loading

    gguf = loading.input_tokens(demo_gguf, "llama", LONG)
    assert 4096 < gguf and abs(loading.input_tokens(demo_mlx, "mlx", LONG) - gguf) <= 1  # BOS or not
