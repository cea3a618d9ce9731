"""`roost eval` with the real demo model: eval sets and their checks, accuracy across
engines, perplexity and KL divergence against a quant made here, golden-output drift, and
a reasoning model scored on its answer after a thought it is given room for."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from conftest import ROOT, crash_in, one_line, roost, served
from roost import report
from roost.machine import fit
from roost.measure import eval_set, evaluate, perplexity
from roost.backends import load
from roost.backends.base import Plan
from roost.errors import UsageError

TEXT = os.path.join(ROOT, "README.md")  # English prose of several thousand tokens, in every checkout


def run_json(*args, timeout=600):
    result = roost("eval", *args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def quants(tmp_path_factory, demo_gguf):
    """The demo model under another name (the same bytes), and requantised to Q4_0 by
    llama.cpp's own quantize: a second, lossier quant of the same weights."""
    import ctypes

    import llama_cpp

    folder = tmp_path_factory.mktemp("quants")
    copy = str(folder / "copy.Q4_1.gguf")
    shutil.copy(demo_gguf, copy)
    q4_0 = str(folder / "requant.Q4_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(demo_gguf.encode(), q4_0.encode(), ctypes.byref(params)) == 0
    return {"copy": copy, "q4_0": q4_0}


# -- the set and its checks ----------------------------------------------------------------


def test_checks_score_known_answers():
    items = eval_set.parse("\n".join([
        '{"id": "exact", "prompt": "2+2?", "answer": "1000"}',
        '{"id": "re", "prompt": "7+5?", "regex": "(?<![\\\\d.])12(?!\\\\.?\\\\d)"}',
        '{"id": "mc", "prompt": "Which is a mammal?", "choices": ["Shark", "Dolphin", "Trout"], "answer": "b"}',
        '{"id": "has", "prompt": "Capital of France?", "contains": ["Paris", "París"]}',
        '{"prompt": "yes?", "answer": "yes", "system": "Be brief.", "max_tokens": 4}',
    ]), "t.jsonl")
    exact, regex, choice, contains, plain = items
    assert [exact.check(s) for s in ("1,000", " 1000.0. ", "**1000**", "1000 apples", "100")] == [True, True, True, False, False]
    assert [regex.check(s) for s in ("It is 12.", "112", "12.5", "3.12")] == [True, False, False, False]
    assert "\nA. Shark\nB. Dolphin\nC. Trout\n" in choice.question and choice.letters == "ABC"
    assert [choice.check(s) for s in ("B", "(B) Dolphin", "The answer is B.", "A dolphin, so B", "A", "D", "Dolphin")] == \
        [True, True, True, True, False, False, False]
    assert [contains.check(s) for s in ("paris!", "PARÍS", "Lyon")] == [True, True, False]
    assert plain.id == "line 5" and plain.system == "Be brief." and plain.max_tokens == 4 and plain.check("Yes.")


@pytest.mark.parametrize("line, says", [
    ('{"prompt": "x", "answer": "1"', "not JSON"),
    ('["prompt", "answer"]', "expected a JSON object"),
    ('{"answer": "1"}', "no prompt"),
    ('{"prompt": "x"}', "give exactly one check"),
    ('{"prompt": "x", "regex": "a", "contains": "b"}', "not regex and contains"),
    ('{"prompt": "x", "regex": "(unclosed"}', "does not compile"),
    ('{"prompt": "x", "choices": ["a", "b"], "answer": "C"}', "not one of the choices' letters A–B"),
    ('{"prompt": "x", "choices": "ab", "answer": "A"}', "choices: give a list"),
    ('{"prompt": "x", "answer": "1", "max_tokens": 0}', "max_tokens"),
    ('{"prompt": "x", "answr": "1"}', "unknown field 'answr'"),
    ('{"id": "a", "prompt": "x", "answer": "1"}', "id 'a' is also on line 1"),
])
def test_a_bad_line_is_named_with_what_is_wrong(line, says):
    with pytest.raises(UsageError) as e:
        eval_set.parse('{"id": "a", "prompt": "fine", "answer": "1"}\n\n' + line, "mine.jsonl")
    assert str(e.value).startswith("mine.jsonl:3: ") and says in str(e.value)


def test_the_builtin_set_is_valid_and_answerable():
    name, items = eval_set.load()
    assert name == "built-in" and 45 <= len(items) <= 60 and len({i.id for i in items}) == len(items)
    assert {i.kind for i in items} == {"answer", "regex", "choices", "contains"}
    # Each item's own right answer passes its check, and a wrong one does not.
    right = {"arith-01": "12", "units-04": "3,600 seconds", "facts-05": "Au", "choice-02": "C. Canberra",
             "format-06": '{"answer": 4}', "format-05": "red, green, blue", "facts-08": "Carbon dioxide."}
    by_id = {i.id: i for i in items}
    for item_id, text in right.items():
        assert by_id[item_id].check(text) and not by_id[item_id].check("I do not know.")


def test_wilson_interval():
    assert evaluate.wilson(0, 0) == (0.0, 1.0)
    lo, hi = evaluate.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert evaluate.wilson(10, 10)[1] == 1.0 and 0.69 < evaluate.wilson(10, 10)[0] < 0.73


# -- models over a set ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_builtin_set_on_the_demo_model_and_a_copy(demo_gguf, quants):
    out = run_json("demo", quants["copy"])
    first, second = out["models"]
    _, items = eval_set.load()
    by_id = {i.id: i for i in items}
    assert out["items"] == len(items) and len(first["answers"]) == len(items)
    for a in first["answers"]:  # every verdict is the item's check applied to the answer given
        assert a["correct"] == by_id[a["id"]].check(a["output"]) and 1 <= a["generated"] <= by_id[a["id"]].max_tokens
    # SmolLM2-135M gets some right and some wrong; the figures follow from the verdicts.
    assert 0 < first["correct"] < len(items) and first["accuracy"] == round(first["correct"] / len(items), 4)
    assert first["interval"][0] <= first["accuracy"] <= first["interval"][1]
    assert first["tps"] > 0 and first["peak_rss_bytes"] > 50_000_000 and first["engine"] == "llama.cpp"
    # The same bytes under another name answer the same, greedy: nothing changed.
    assert [a["output"] for a in second["answers"]] == [a["output"] for a in first["answers"]]
    assert out["changes"] == [{"model": "copy.Q4_1.gguf", "now_right": [], "now_wrong": [], "outputs_differ": 0}]
    history = run_json("--history")["eval"]
    assert [h["model"] for h in history] == ["demo", "copy.Q4_1.gguf"] and history[0]["correct"] == first["correct"]


@pytest.mark.slow
def test_a_table_across_three_engines(demo_gguf, demo_mlx, quants):
    with served(load(demo_gguf, Plan(n_ctx=2048))) as url:
        result = roost("eval", quants["q4_0"], demo_mlx, url, "--limit", "6", "--answers", timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    table = result.stdout[result.stdout.index("built-in set, 6 items"):]
    assert "llama.cpp CPU" in table and "mlx CPU" in table and "remote" in table and "/6" in table
    assert table.count(" vs ") == 2 and "answers differ" in table
    assert result.stdout.count("✓") + result.stdout.count("✗") == 18  # --answers: six per model


def test_eval_mistakes_get_one_line(tmp_path, demo_gguf, roost_here):
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"prompt": "ok", "answer": "1"}\n{"prompt": "x", "choices": ["a"], "answer": "A"}\n')
    one_line(roost_here("eval", "demo", "--set", str(bad)), f"{bad}:2: choices: give a list of 2 to 10")
    one_line(roost_here("eval", "demo", "--set", str(tmp_path / "none.jsonl")), "no eval set at")
    one_line(roost_here("eval", "demo", "no-such-model"), "unknown model 'no-such-model'")
    one_line(roost_here("eval"), "give one or more models")
    one_line(roost_here("eval", "--ppl", str(tmp_path / "none.txt"), "demo"), "no text file at")
    one_line(roost_here("eval", "--ppl", TEXT, "http://127.0.0.1:9"), "a server does not send")
    one_line(roost_here("eval", "--ppl", TEXT, "demo", "--golden"), "--golden goes with an eval set, not with --ppl")
    one_line(roost_here("eval", "demo", "--chunks", "2"), "--chunks goes with --ppl")
    one_line(roost_here("eval", "--ppl", TEXT, "demo", "--think-budget", "0"), "--think-budget goes with an eval set")
    short = tmp_path / "short.txt"
    short.write_text("Hello there.")
    one_line(roost_here("eval", "--ppl", str(short), "demo"), "too short to score")
    empty = roost_here("eval", "--history")
    assert empty.returncode == 0 and "no evaluations yet" in empty.stdout


# -- reasoning models ----------------------------------------------------------------------
# The thinking demo model (conftest.py) never closes its thought itself: left alone it ends
# its turn inside it, and a budget is what brings it to an answer.


def test_a_reasoning_model_gets_room_to_think_and_only_its_answer_is_scored(thinking_gguf, demo_gguf):
    items = eval_set.parse('{"id": "sum", "prompt": "What is 7 + 5?", "regex": "12", "max_tokens": 8}', "t.jsonl")
    engine = load(thinking_gguf, Plan(n_ctx=1024))
    try:
        own = evaluate.run(engine, items, model="think", set_name="built-in", load_s=None)
        budget = evaluate.run(engine, items, model="think", set_name="built-in", load_s=None, think_budget=4)
        off = evaluate.run(engine, items, model="think", set_name="built-in", load_s=None, think="off")
    finally:
        engine.close()
    assert own.thinking == evaluate.Thinking("think", None, evaluate.DEFAULT_THINK_BUDGET,
                                             evaluate.DEFAULT_THINK_BUDGET + evaluate.CLOSE_ROOM)
    (a,) = own.answers  # it thought and never answered: the thought is not taken for an answer
    assert a.reasoning_tokens > 0 and a.output == "" and not a.correct and a.stop_reason == "stop"

    (b,) = budget.answers  # four tokens of thought, its closing tag, then the answer that is scored
    assert budget.thinking.budget == 4 and budget.thinking.added_tokens == 4 + evaluate.CLOSE_ROOM
    assert 4 < b.reasoning_tokens <= 4 + evaluate.CLOSE_ROOM
    assert b.reasoning_tokens < b.generated <= 8 + budget.thinking.added_tokens
    assert b.output.strip() and "think>" not in b.output and b.correct == items[0].check(b.output)
    assert budget.as_dict()["reasoning_tokens"] == b.reasoning_tokens == budget.as_dict()["answers"][0]["reasoning_tokens"]

    (c,) = off.answers  # the template closes the thought in the prompt: all of it is answer
    assert off.thinking.think == "off" and off.thinking.budget is None and c.reasoning_tokens == 0 and c.output

    table = report.evaluation([own, budget], [], "built-in", items)
    assert "think thinks (think format): budget 512 tokens" in table
    assert "max_tokens 536 (8 for the answer, 512 for the thought, 16 to close it)" in table
    assert "1 of 1 ended inside it (no answer)" in table and "budget 4 tokens" in table
    assert "thinking off" in report.evaluation([off], [], "built-in", items)
    assert f"sum  {b.reasoning_tokens} tok  " in report.answers(budget, items)
    assert max(len(line) for line in table.splitlines()) <= 80, table

    # A model that does not reason runs and reads as it always did.
    demo = load(demo_gguf, Plan(n_ctx=1024))
    try:
        plain = evaluate.run(demo, items, model="demo", set_name="built-in", load_s=None, think_budget=4)
    finally:
        demo.close()
    (d,) = plain.answers
    assert plain.thinking is None and d.reasoning_tokens == 0 and plain.as_dict()["thinking"] is None
    assert "think" not in report.evaluation([plain], [], "built-in", items)
    listed = report.answers(plain, items).splitlines()
    assert listed[0] == "demo:" and " tok  " not in listed[1]


@pytest.mark.slow
def test_eval_of_a_reasoning_model_states_its_budget_and_keeps_thoughts_out_of_golden_outputs(thinking_gguf):
    out = run_json(thinking_gguf, "--limit", "3", "--think-budget", "4", "--golden")
    (model,) = out["models"]
    assert model["thinking"] == {"format": "think", "think": None, "budget": 4, "added_tokens": 20}
    for a in model["answers"]:  # a thought of four tokens and its closing tag, then an answer
        assert 4 < a["reasoning_tokens"] <= 20 and a["reasoning_tokens"] < a["generated"] <= 48 + 20
        assert a["output"].strip() and "think>" not in a["output"]
        assert set(a) == {"id", "output", "correct", "generated", "stop_reason", "reasoning_tokens"}
    assert model["reasoning_tokens"] == sum(a["reasoning_tokens"] for a in model["answers"])
    kept = run_json("--history")["eval"][-1]
    assert kept["thinking"]["budget"] == 4 and kept["reasoning_mean"] == model["reasoning_mean"]

    with open(model["golden"]["stored"], encoding="utf-8") as f:
        golden = json.load(f)
    assert golden["outputs"] == {a["id"]: a["output"] for a in model["answers"]}  # answers, never thoughts
    assert golden["thinking"]["budget"] == 4
    golden["outputs"]["arith-01"] = "An answer from another build."
    with open(model["golden"]["stored"], "w", encoding="utf-8") as f:
        json.dump(golden, f)

    result = roost("eval", thinking_gguf, "--limit", "3", "--think-budget", "4", "--golden", "--answers")
    assert result.returncode == 0, result.stderr
    assert "1 answers changed;" in result.stderr and "thinking budget 4)" in result.stderr
    assert "arith-01:" in result.stderr and "arith-02:" not in result.stderr  # the same thoughts, the same answers
    assert "SmolLM2-think.gguf thinks (think format): budget 4 tokens" in result.stdout
    assert "max_tokens 68 (48 for the answer, 4 for the thought, 16 to close it)" in result.stdout
    for a in model["answers"]:
        assert f"{a['id']}  {a['reasoning_tokens']} tok  " in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout


# -- perplexity and KL divergence ----------------------------------------------------------


@pytest.mark.slow
def test_perplexity_matches_llama_cpps_own_logits(demo_gguf):
    """One chunk scored by roost, and by llama-cpp-python's own logits_all evaluation."""
    import llama_cpp

    ours = run_json("--ppl", TEXT, "demo", "--chunks", "1")[0]
    # Flash attention as roost's default on this CPU has it: its sums differ in the last bits.
    llm = llama_cpp.Llama(demo_gguf, n_ctx=512, logits_all=True, verbose=False,
                          flash_attn=fit.flash_attention("auto", "f16", "CPU"))
    with open(TEXT, encoding="utf-8") as f:
        tokens = llm.tokenize(f.read().encode(), add_bos=False, special=True)
    bos = [llm.token_bos()] if llm._model.add_bos_token() else []
    chunk = (bos + tokens)[:512]
    llm.eval(chunk)
    logprobs = perplexity.log_softmax(np.asarray(llm.scores[256:511], dtype=np.float64))
    nll = -logprobs[np.arange(255), chunk[257:512]]
    llm.close()
    assert ours["tokens"] == 255 and ours["chunks"] == 1
    assert ours["ppl"] == pytest.approx(math.exp(nll.mean()), rel=1e-3)
    assert 1 < ours["ppl"] < 200  # a real model on English prose


@pytest.mark.slow
def test_kl_divergence_of_a_model_against_itself_and_a_lossier_quant(quants):
    result = roost("eval", "--ppl", TEXT, "demo", quants["copy"], quants["q4_0"], "--chunks", "3", timeout=600)
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    ref, same, q4_0 = run_json("--ppl", TEXT, "demo", quants["copy"], quants["q4_0"], "--chunks", "3")
    assert ref["kl_mean"] is None and ref["tokens"] == 3 * 255
    assert same["kl_mean"] == 0.0 and same["kl_max"] == 0.0 and same["top1"] == 1.0 and same["ppl"] == ref["ppl"]
    assert 0 < q4_0["kl_mean"] < 1 and q4_0["kl_p99"] >= q4_0["kl_mean"] and 0.5 < q4_0["top1"] < 1.0
    assert q4_0["ppl"] != ref["ppl"]
    history = run_json("--history")["perplexity"]
    assert [h["model"] for h in history[-3:]] == ["demo", "copy.Q4_1.gguf", "requant.Q4_0.gguf"]


@pytest.mark.slow
def test_kl_divergence_across_engines(demo_mlx):
    """llama.cpp and MLX run the same weights: close, not identical."""
    ref, mlx = run_json("--ppl", TEXT, "demo", demo_mlx, "--chunks", "1")
    assert mlx["engine"] == "mlx"
    if mlx["why"]:  # the tokenizer rebuilt for MLX may read the text otherwise: then only perplexities
        assert "other tokens" in mlx["why"] and mlx["kl_mean"] is None
    else:
        assert 0 <= mlx["kl_mean"] < 0.05 and mlx["top1"] > 0.9
        assert mlx["ppl"] == pytest.approx(ref["ppl"], rel=0.05)


# -- golden outputs --------------------------------------------------------------------------


@pytest.mark.slow
def test_golden_outputs_drift_is_a_warning_with_a_diff():
    stored = roost("eval", "demo", "--golden", "--limit", "3")
    assert stored.returncode == 0 and "golden outputs of demo stored in" in stored.stderr, stored.stderr
    where = stored.stderr.split("stored in ")[1].split()[0]
    same = roost("eval", "demo", "--golden", "--limit", "3")
    assert same.returncode == 0 and "gives its golden outputs, all 3" in same.stderr and "warning" not in same.stderr

    with open(where, encoding="utf-8") as f:
        golden = json.load(f)
    real = golden["outputs"]["arith-02"]
    golden["outputs"]["arith-02"] = "An answer from another build."
    with open(where, "w", encoding="utf-8") as f:
        json.dump(golden, f)
    drifted = roost("eval", "demo", "--golden", "--limit", "3")
    assert drifted.returncode == 0 and "Traceback" not in drifted.stderr
    assert "roost: warning: demo drifted from its golden outputs (1 answers changed" in drifted.stderr
    assert "arith-02:" in drifted.stderr and "- An answer from another build." in drifted.stderr
    assert "+ " + real.splitlines()[0] in drifted.stderr and "arith-01:" not in drifted.stderr
    as_json = run_json("demo", "--golden", "--limit", "3")["models"][0]["golden"]
    assert [c["id"] for c in as_json["changed"]] == ["arith-02"] and as_json["changed"][0]["now"] == real

    renewed = roost("eval", "demo", "--golden-update", "--limit", "3")
    assert renewed.returncode == 0 and "stored in" in renewed.stderr
    assert "gives its golden outputs" in roost("eval", "demo", "--golden", "--limit", "3").stderr

    with open(where, "w") as f:
        f.write("{torn")
    one_line(roost("eval", "demo", "--golden", "--limit", "3"), "cannot be read", "--golden-update")


def test_ctrl_c_stops_an_eval_and_keeps_nothing():
    import signal
    import subprocess
    import sys

    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "roost", "eval", "demo", "--golden"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, env=env, text=True)
    while "52 items" not in proc.stderr.readline():  # the progress line: interrupt while it answers
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "roost: interrupted"
    data = env["ROOST_DATA_DIR"]
    assert not os.path.exists(os.path.join(data, "results.jsonl")) and not os.path.exists(os.path.join(data, "golden"))


# -- the engine's process dying ------------------------------------------------------------
# Real crashes in each model's own engine process, through its test-only hook (backends/child_main.py).


@pytest.mark.slow
def test_an_engine_crash_marks_that_model_crashed_and_eval_goes_on(quants, monkeypatch, tmp_path):
    crash_in(monkeypatch, tmp_path, "stream:2", "abort")
    result = roost("eval", "demo", quants["copy"], "--limit", "3", "--json", timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    out = json.loads(result.stdout)
    first, second = out["models"]
    assert first["crashed"].startswith("the engine crashed (SIGABRT) while answering (item 1 of 3, ")
    assert first["answers"] == [] and out["changes"] == []  # an answer cut short is not compared
    assert second["crashed"] is None and len(second["answers"]) == 3 and second["engine"] == "llama.cpp"
    assert f"roost: demo: {first['crashed']}; left out, going on" in result.stderr.splitlines()
    assert [h["model"] for h in run_json("--history")["eval"]] == ["copy.Q4_1.gguf"]  # only what finished is kept


@pytest.mark.slow
def test_an_engine_crash_at_load_is_one_line_under_the_table(quants, monkeypatch, tmp_path):
    crash_in(monkeypatch, tmp_path, "load", "segv")
    result = roost("eval", "demo", quants["copy"], "--limit", "2", timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "built-in set, 2 items" in result.stdout and "copy.Q4_1.gguf" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "demo: left out: the engine crashed (SIGSEGV) while loading the model"
    assert "roost: demo: the engine crashed (SIGSEGV) while loading the model; left out, going on" in result.stderr


@pytest.mark.slow
def test_an_engine_crash_while_scoring_perplexity_goes_on_with_the_next(quants, monkeypatch, tmp_path):
    crash_in(monkeypatch, tmp_path, "load", "kill")
    result = roost("eval", "--ppl", TEXT, quants["copy"], "demo", "--chunks", "1", "--json", timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    scores = json.loads(result.stdout)
    assert [s["model"] for s in scores] == ["demo"] and scores[0]["ppl"] > 1
    assert "roost: copy.Q4_1.gguf: the engine crashed (SIGKILL" in result.stderr
