"""`roost run` on a reasoning model: the answer on stdout, the thought apart (issue #20).

The model is the real SmolLM2 behind a template that opens `<think>` in the prompt
(conftest's thinking_gguf): it never closes the thought itself, so a budget is what makes
it answer, and without one all it writes is thought."""

import io
import dataclasses
import json
import re
import sys

import pytest

from conftest import roost, served
from roost.backends import load
from roost.backends.base import ANSWER, REASONING, Stats, Token
from roost.backends.reasoning import THINK
from roost.cli.run import DIM, PLAIN, Shown, unanswered
from roost.report import stats_line

STORY = "Write a very long story about a dragon."
BUDGET = ("--think-budget", "16", "-n", "48", "-t", "0")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def budgeted(thinking_gguf):
    """One --json run with a budget: what the other runs of the same greedy prompt are held to."""
    result = roost("run", thinking_gguf, STORY, *BUDGET, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_has_the_thought_and_the_answer_apart(budgeted):
    thought, answer, stats = budgeted["reasoning"], budgeted["text"], budgeted["stats"]
    assert thought.strip() and answer.strip()
    for tag in ("<think>", "</think>"):
        assert tag not in thought and tag not in answer
    # The budget's 16 tokens, then the closing "\n</think>\n\n" (a token is at least a character).
    assert 16 < stats["reasoning_tokens"] <= 16 + len(THINK.close_text)
    assert stats["answer_tokens"] > 0
    assert stats["reasoning_tokens"] + stats["answer_tokens"] == stats["generated_tokens"]
    assert stats["ttft_s"] < stats["answer_ttft_s"]


def test_a_pipe_gets_the_answer_only_and_the_log_no_thought(thinking_gguf, budgeted):
    result = roost("run", thinking_gguf, STORY, *BUDGET, "--stats")  # stdout and stderr are pipes here
    assert result.returncode == 0, result.stderr
    assert result.stdout == budgeted["text"] + "\n"
    assert "<think>" not in result.stdout and budgeted["reasoning"] not in result.stdout
    line, = result.stderr.splitlines()  # the stats line, and no thought
    assert budgeted["reasoning"] not in result.stderr
    stats = budgeted["stats"]
    assert f"thought {stats['reasoning_tokens']} tok in " in line
    assert f" · answer {stats['answer_tokens']} tok at " in line
    assert re.search(r"TTFT [0-9.]+ s \(answer [0-9.]+ s\)", line) and "generated" not in line


def test_on_a_terminal_the_thought_is_dimmed_on_stderr(thinking_gguf, budgeted, roost_here, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's, standing in for a terminal
    shown = roost_here("run", thinking_gguf, STORY, *BUDGET)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == budgeted["text"] + "\n"
    assert shown.stderr.startswith(DIM) and ANSI.sub("", shown.stderr) == budgeted["reasoning"] + "\n"

    hidden = roost_here("run", thinking_gguf, STORY, *BUDGET, "--hide-thinking")
    assert hidden.returncode == 0 and hidden.stdout == shown.stdout and hidden.stderr == ""


def on_a_terminal(*tokens: tuple[str, str]) -> tuple[str, str]:
    """What Shown writes to stdout and to a stderr that is a terminal, given (kind, text)s."""
    out, err = io.StringIO(), io.StringIO()
    err.isatty = lambda: True
    shown = Shown(out, err)
    for kind, text in tokens:
        shown.token(Token(text, kind=kind))
    shown.end_thought()
    return out.getvalue(), err.getvalue()


def test_thought_and_answer_each_start_on_a_line_of_their_own():
    out, err = on_a_terminal((REASONING, "Paris is"), (REASONING, " the capital."), (ANSWER, "Paris"), (ANSWER, "."))
    assert out == "Paris." and err == f"{DIM}Paris is{PLAIN}{DIM} the capital.{PLAIN}\n"

    out, err = on_a_terminal((REASONING, "Done.\n"), (ANSWER, "Paris."))  # its line ended already
    assert out == "Paris." and err == f"{DIM}Done.\n{PLAIN}"

    # A model that thinks again inside its answer: the lines are ended on stderr, never stdout.
    out, err = on_a_terminal((REASONING, "Hm."), (ANSWER, "Paris"), (REASONING, "Sure?"), (ANSWER, "Yes."))
    assert out == "ParisYes." and err == f"{DIM}Hm.{PLAIN}\n\n{DIM}Sure?{PLAIN}\n"

    # An answer that ended its line: the two thoughts still a blank line apart, as in --json.
    out, err = on_a_terminal((REASONING, "Hm."), (ANSWER, "Paris.\n"), (REASONING, "Sure?"))
    assert out == "Paris.\n" and err == f"{DIM}Hm.{PLAIN}\n\n{DIM}Sure?{PLAIN}\n"

    out, err = on_a_terminal((REASONING, "Still think"))  # cut inside the thought
    assert out == "" and err == f"{DIM}Still think{PLAIN}\n"


def test_remote_run_sends_the_thinking_flags_and_shows_the_box_thinking_the_same_way(thinking_gguf, budgeted,
                                                                                    roost_here):
    engine = load(thinking_gguf)
    try:
        with served(engine) as url:
            remote = roost_here("run", "--remote", url, STORY, *BUDGET, "--json")
            off = roost_here("run", "--remote", url, STORY, "--think", "off", "-n", "16", "-t", "0", "--json")
    finally:
        engine.close()
    assert remote.returncode == 0 and off.returncode == 0, remote.stderr + off.stderr
    remote = json.loads(remote.stdout)
    assert (remote["reasoning"], remote["text"]) == (budgeted["reasoning"], budgeted["text"])  # the budget got there
    assert remote["stats"]["reasoning_tokens"] == budgeted["stats"]["reasoning_tokens"]
    off = json.loads(off.stdout)
    assert off["reasoning"] == "" and off["text"].strip() and off["stats"]["reasoning_tokens"] == 0


def test_think_off_gives_no_thought(thinking_gguf, roost_here):
    result = roost_here("run", thinking_gguf, STORY, "--think", "off", "-n", "16", "-t", "0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["reasoning"] == "" and out["stats"]["reasoning_tokens"] == 0
    assert out["text"].strip() and out["stats"]["answer_tokens"] == out["stats"]["generated_tokens"]
    assert "does not reason" not in result.stderr


def test_think_flags_on_a_model_that_does_not_reason_are_said_to_change_nothing(demo_gguf, roost_here):
    plain = roost_here("run", demo_gguf, STORY, "-n", "8", "-t", "0", "--json")
    told = roost_here("run", demo_gguf, STORY, "-n", "8", "-t", "0", "--json", "--think", "off", "--think-budget", "4")
    assert told.returncode == 0 and json.loads(told.stdout)["text"] == json.loads(plain.stdout)["text"]
    assert told.stderr.count("\n") == 1 and "does not reason" in told.stderr and "change nothing" in told.stderr
    assert plain.stderr == ""


def test_cut_inside_the_thought_is_an_empty_answer_and_one_line(thinking_gguf, roost_here):
    result = roost_here("run", thinking_gguf, STORY, "-n", "8", "-t", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\n"
    assert result.stderr.splitlines() == [
        "roost: no answer: the model was still thinking (8 tokens) when it reached the token limit; "
        "raise -n or set --think-budget"]


def stats(**split) -> Stats:
    return Stats(prompt_tokens=20, cached_tokens=0, generated_tokens=101, prefill_s=0.1, decode_s=2.0, ttft_s=0.2,
                 stop_reason="stop", n_ctx=4096, peak_rss_bytes=None, **split)


def test_stats_line_of_a_model_that_does_not_think_is_as_before():
    assert stats_line(stats()) == ("prompt 20 tok (0 cached) at 200.0 tok/s · generated 101 tok at 50.0 tok/s"
                                   " · TTFT 0.200 s · peak memory n/a · context 121/4096")


def test_stats_line_shows_thought_and_answer_apart():
    # 81 tokens of thought over 1.6 s, then 20 of answer from 1.8 s to 2.2 s
    assert stats_line(stats(reasoning_tokens=81, answer_ttft_s=1.8)) == (
        "prompt 20 tok (0 cached) at 200.0 tok/s · thought 81 tok in 1.6 s (50.6 tok/s)"
        " · answer 20 tok at 47.5 tok/s · TTFT 0.200 s (answer 1.800 s) · peak memory n/a · context 121/4096")
    assert " · thought 101 tok in 2.0 s (50.5 tok/s) · no answer · TTFT 0.200 s · " in stats_line(
        stats(reasoning_tokens=101))


def test_the_no_answer_line_is_for_a_thought_with_no_answer_only_and_says_why():
    assert unanswered(stats()) is None and unanswered(stats(reasoning_tokens=81, answer_ttft_s=1.8)) is None
    cut = stats(reasoning_tokens=101)
    assert unanswered(dataclasses.replace(cut, stop_reason="context")) == (
        "roost: no answer: the model was still thinking (101 tokens) when the context was full; "
        "raise --ctx or set --think-budget")
    assert unanswered(dataclasses.replace(cut, stop_reason="cancelled")).endswith("(101 tokens) when it was stopped")


def test_no_color_shows_the_thought_undimmed(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out, err = on_a_terminal((REASONING, "Hm."), (ANSWER, "Paris."))
    assert out == "Paris." and err == "Hm.\n"
