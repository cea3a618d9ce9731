"""`roost run` as a user runs it: a real process, a real model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, roost
from gguf_files import truncated, with_chat_template

QUESTION = "What is the capital of Japan?"


def one_error_line(result, *needles):
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roost: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_json_has_text_and_all_stats():
    result = roost("run", "demo", QUESTION, "--temperature", "0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "Tokyo" in out["text"]
    stats = out["stats"]
    for key in ("prompt_tokens", "cached_tokens", "generated_tokens", "prefill_s", "decode_s",
                "ttft_s", "stop_reason", "prefill_tps", "decode_tps", "n_ctx", "peak_rss_bytes"):
        assert key in stats, key
    assert stats["generated_tokens"] > 1 and stats["decode_tps"] > 0 and stats["ttft_s"] > 0
    assert stats["stop_reason"] == out["stop_reason"] == "stop"
    assert out["memory"]["buffers"]["kv"] > 0
    assert out["engine"]["engine"] == "llama.cpp" and out["engine"]["n_ctx"] == 4096


def test_streams_text_and_stats_line():
    result = roost("run", "demo", QUESTION, "--temperature", "0", "--stats", "-n", "40")
    assert result.returncode == 0, result.stderr
    assert "Tokyo" in result.stdout
    stats = result.stderr.strip().splitlines()
    assert len(stats) == 1
    assert "tok/s" in stats[0] and "TTFT" in stats[0] and "peak memory" in stats[0]


def test_same_seed_same_answer():
    args = ("run", "demo", "Tell me a joke.", "--seed", "7", "-n", "30", "--json")
    first, second = (json.loads(roost(*args).stdout)["text"] for _ in range(2))
    assert first == second


def test_prompt_from_stdin():
    result = roost("run", "demo", "--temperature", "0", "-n", "40", input=QUESTION)
    assert result.returncode == 0, result.stderr
    assert "Tokyo" in result.stdout


def test_argument_and_stdin_are_joined():
    alone = json.loads(roost("run", "demo", "Answer in one word.", "-n", "1", "--json").stdout)
    both = roost("run", "demo", "Answer in one word.", "--temperature", "0", "-n", "20", "--json", input=QUESTION)
    joined = json.loads(both.stdout)
    assert "Tokyo" in joined["text"]
    assert joined["stats"]["prompt_tokens"] > alone["stats"]["prompt_tokens"] + 5


def test_system_prompt_reaches_the_model():
    plain = json.loads(roost("run", "demo", "Hi", "-n", "1", "--json").stdout)
    system = json.loads(roost("run", "demo", "Hi", "-n", "1", "--json", "--system", "You are a pirate and talk like one. " * 5).stdout)
    assert system["stats"]["prompt_tokens"] > plain["stats"]["prompt_tokens"] + 5


def test_missing_file(roost_here):
    one_error_line(roost_here("run", "/no/such/model.gguf", "hi"), "no such model file", "/no/such/model.gguf")


def test_directory(roost_here):
    one_error_line(roost_here("run", ROOT, "hi"), "directory")


def test_not_a_gguf(tmp_path, roost_here):
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some text, not a model\n")
    one_error_line(roost_here("run", str(fake), "hi"), "not a GGUF")


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])  # in the header, the tensors, the last bytes
def test_truncated_gguf(tmp_path, demo_gguf, keep, roost_here):
    cut = truncated(demo_gguf, str(tmp_path / "cut.gguf"), keep)
    one_error_line(roost_here("run", cut, "hi"), "truncated or corrupt", "download it again")


def test_empty_prompt(roost_here):
    one_error_line(roost_here("run", "demo", ""), "prompt is empty")
    one_error_line(roost_here("run", "demo", input="   \n"), "prompt is empty")


def test_context_overflow_gives_the_numbers(roost_here):
    line = one_error_line(roost_here("run", "demo", "word " * 300, "--ctx", "128"), "context holds 128", "--ctx")
    assert "the prompt is 3" in line  # ~300 words: a three-digit token count


def test_bad_option_value(roost_here):
    one_error_line(roost_here("run", "demo", "hi", "--ctx", "0"), "--ctx")


def test_sampling_flags_reach_the_model():
    # top-k 1 is greedy whatever the temperature: the answer is temperature 0's
    greedy = json.loads(roost("run", "demo", "hi", "-t", "0", "-n", "4", "--json").stdout)["text"]
    out = roost("run", "demo", "hi", "--top-k", "1", "--top-p", "1", "--min-p", "0", "--repeat-penalty", "1",
                "-t", "2", "-n", "4", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["text"] == greedy


def test_options_go_before_between_and_after_model_and_prompt():
    first = json.loads(roost("run", "demo", "--engine", "llama", QUESTION, "-t", "0", "-n", "4", "--json").stdout)
    again = roost("run", "-n", "4", "--json", "demo", "-t", "0", "--engine", "llama", QUESTION)
    assert again.returncode == 0 and json.loads(again.stdout)["text"] == first["text"]
    dashed = roost("run", "demo", "-t", "0", "-n", "4", "--json", "--", "-- is a dash; what is -1?")
    assert dashed.returncode == 0 and json.loads(dashed.stdout)["text"]


def test_sampling_out_of_bounds_is_one_line_and_exit_2(roost_here):
    for flag, value in (("--temperature", "2.5"), ("--top-k", "1001"), ("--top-p", "1.5"), ("--top-k", "x")):
        result = roost_here("run", "demo", "hi", flag, value)
        one_error_line(result, flag, value)
        assert result.returncode == 2


def test_unsafe_chat_template_is_refused_without_running_it(tmp_path, demo_gguf, roost_here):
    canary = tmp_path / "canary"
    hostile = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}" % canary
    model = with_chat_template(demo_gguf, str(tmp_path / "hostile.gguf"), hostile)
    one_error_line(roost_here("run", model, "hi"), "chat template", "unsafe")
    assert not canary.exists()


@pytest.mark.slow
def test_model_without_template_falls_back_to_chatml(tmp_path, demo_gguf):
    model = with_chat_template(demo_gguf, str(tmp_path / "plain.gguf"), None)
    out = json.loads(roost("run", model, QUESTION, "--temperature", "0", "-n", "30", "--json").stdout)
    assert out["engine"]["chat_template"].startswith("fallback")
    assert "Tokyo" in out["text"]


@pytest.mark.parametrize("as_json", [False, pytest.param(True, marks=pytest.mark.slow)])  # True waits 5 s
def test_ctrl_c_stops_cleanly_and_keeps_the_text(as_json):
    args = [sys.executable, "-m", "roost", "run", "demo", "Write a very long story about a dragon.",
            "--temperature", "0", "-n", "3000"] + (["--json"] if as_json else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    if as_json:
        time.sleep(5)  # nothing streams with --json: interrupt while it generates (load takes ~0.3 s)
    else:
        first = os.read(proc.stdout.fileno(), 64)  # wait until text is streaming
        assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    if as_json:
        result = json.loads(out)
        assert result["stop_reason"] == "cancelled" and result["text"]
    else:
        # The first chunk was the model's: Ctrl-C came at once, so little more is owed.
        assert (first + out).strip() and out.endswith(b"\n")


def test_run_imports_nothing_heavy():
    # -X importtime logs every import, the forked process's that runs the model included.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "roost", "run", "demo", "hi", "-n", "2"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert result.returncode == 0 and "llama_cpp" in imported  # it did run the model
    assert not {"textual", "mlx", "huggingface_hub", "starlette", "uvicorn", "httpx2"} & imported
    code = "import sys, roost.cli; print(sorted(m for m in ('llama_cpp', 'jinja2', 'psutil') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
