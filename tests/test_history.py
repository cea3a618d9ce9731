"""Saved conversations (#25): roost history list, show, export and rm on files the real
Conversation writer made; marks in the chat app (Pilot) and the history screen's export;
an eval set built from the marks and run on the demo model with real llama.cpp."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import one_line
from pilot import ask_and_wait, chat, notes, until
from roost import history, paths
from roost.backends.base import Params, Stats
from roost.measure import eval_set
from roost.tui.screens.history import HistoryScreen
from roost.tui.screens.right_answer import RightAnswerScreen

STATS = Stats(prompt_tokens=20, cached_tokens=4, generated_tokens=9, prefill_s=0.1, decode_s=0.3, ttft_s=0.12,
              stop_reason="stop", n_ctx=2048, peak_rss_bytes=300 * 1024**2)


def saved_as(name: str, model: str = "demo", system: str | None = "Be brief.",
             params: Params | None = Params(temperature=0.2, seed=7)) -> history.Conversation:
    """A conversation under a file name of our choosing (ids that share a start), written
    as Conversation.create writes one."""
    made = history.Conversation.create(model, system, params)
    conv = history.Conversation(os.path.join(paths.history_dir(), name + ".jsonl"))
    os.rename(made.path, conv.path)
    return conv


def recorded():
    """Two conversations: one with a thought, stats and both marks; one older without the
    settings a newer roost keeps."""
    first = saved_as("20261201-100000-abc123")
    first.add({"role": "user", "content": "What is the capital of France?"})
    first.add({"role": "assistant", "content": "Lyon."}, STATS, reasoning="France... its capital")
    first.add({"role": "user", "content": "And of Japan?"})
    first.add({"role": "assistant", "content": "Tokyo. It is large."}, STATS)
    first.mark(0, False, "Paris")
    first.mark(1, True)
    old = saved_as("20261130-090000-abd999", model="other", system=None, params=None)
    old.add({"role": "user", "content": "Say hi"})
    old.add({"role": "assistant", "content": "Hi!"})
    os.utime(old.path, (1, 1))  # listed after the first
    return first, old


def test_list_show_export_and_rm(roost_here, tmp_path):
    first, old = recorded()
    out = roost_here("history")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # "ab" starts both: each short id is the fewest hex digits, four at least, that tell them apart.
    assert lines[1].split()[0] == "abc1" and lines[2].split()[0] == "abd9"
    assert "demo" in lines[1] and " 2 " in lines[1] and "What is the capital of France?" in lines[1]
    assert "other" in lines[2] and "Say hi" in lines[2]
    listed = json.loads(roost_here("history", "--json").stdout)
    assert [(c["short_id"], c["model"], c["turns"], c["marks"]) for c in listed] == [("abc1", "demo", 2, 2),
                                                                                     ("abd9", "other", 1, 0)]

    shown = roost_here("history", "show", "abc1").stdout
    assert "> What is the capital of France?" in shown and "thought: France... its capital" in shown
    assert "Lyon." in shown and "marked bad; the right answer: Paris" in shown and "marked good" in shown
    assert "generated 9 tok at 26.7 tok/s" in shown and "temperature 0.2" in shown

    md = roost_here("history", "export", "abc1").stdout
    assert md.startswith("# What is the capital of France?\n") and "- Model: demo" in md
    assert "- System prompt: Be brief." in md and "temperature 0.2" in md and "seed 7" in md
    assert "<details><summary>Thought</summary>" in md and md.count("*prompt 20 tok (4 cached)") == 2
    assert "- Sampling: not kept (saved by an older roost)" in roost_here("history", "export", "abd").stdout

    target = tmp_path / "out.json"
    written = roost_here("history", "export", "20261201", "--format", "json", "-o", str(target))
    assert written.stdout.strip() == str(target)
    data = json.loads(target.read_text())
    assert data["messages"][:3] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "What is the capital of France?"},
                                    {"role": "assistant", "content": "Lyon.", "reasoning_content": "France... its capital"}]
    assert data["meta"]["sampling"]["temperature"] == 0.2 and data["meta"]["model"] == "demo"
    assert [s["generated_tokens"] for s in data["stats"]] == [9, 9]
    assert data["marks"] == [{"index": 0, "good": False, "answer": "Paris"}, {"index": 1, "good": True, "answer": None}]

    one_line(roost_here("history", "rm", "abc1"), "give -y")  # no terminal to ask at
    assert os.path.exists(first.path)
    assert roost_here("history", "rm", "abc1", "-y").stdout.strip() == "removed 20261201-100000-abc123"
    assert not os.path.exists(first.path)
    assert [c["short_id"] for c in json.loads(roost_here("history", "--json").stdout)] == ["abd9"]


def test_an_unknown_or_ambiguous_id_is_one_line(roost_here):
    recorded()
    unknown = roost_here("history", "show", "fff")
    assert unknown.returncode == 1 and one_line(unknown, "no conversation 'fff'", "roost history lists them")
    ambiguous = roost_here("history", "export", "ab")
    assert ambiguous.returncode == 1 and one_line(ambiguous, "'ab' names 2 conversations (abd9, abc1)")
    one_line(roost_here("history", "show"), "roost history show ID")
    one_line(roost_here("history", "show", "abc1", "-y"), "-y goes with roost history rm")


def test_a_damaged_file_is_listed_with_a_note(roost_here):
    conv = saved_as("20261202-100000-0d0d0d")
    conv.add({"role": "user", "content": "First question"})
    with open(conv.path, "ab") as f:
        f.write(b'\xff\xfe{"type": "message", "role": "assi\n[1, 2]\n{"type": "mark"}\n')
    conv.add({"role": "assistant", "content": "An answer"})
    with open(conv.path, "ab") as f:
        f.write(b'{"type": "message", "ro')  # a write torn by a crash
    wreck = os.path.join(paths.history_dir(), "20261202-110000-eeeeee.jsonl")
    with open(wreck, "wb") as f:
        f.write(b"\x00\x01\xfe not JSON \xff" * 8)
    out = roost_here("history")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "First question  [damaged: 4 unreadable lines]" in out.stdout
    assert "(no question)  [damaged: 1 unreadable line]" in out.stdout
    shown = roost_here("history", "show", "0d0d")
    assert shown.returncode == 0 and "An answer" in shown.stdout and "4 lines could not be read" in shown.stdout
    assert history.Conversation(conv.path).load()[1][-1] == {"role": "assistant", "content": "An answer"}
    os.mkdir(os.path.join(paths.history_dir(), "20261202-120000-f0f0f0.jsonl"))  # not even a file
    assert "(cannot be read)" in roost_here("history").stdout
    one_line(roost_here("history", "show", "f0f0"), "cannot read conversation 20261202-120000-f0f0f0: Is a directory")


def test_no_marks_is_one_line(roost_here):
    conv = saved_as("20261203-100000-123456")
    conv.add({"role": "user", "content": "Hi"})
    conv.add({"role": "assistant", "content": "Hello"})
    conv.mark(0, False)  # bad, but no right answer typed: nothing to check against
    result = roost_here("eval", "--from-history")
    assert result.returncode == 1 and one_line(result, "no marked answers", "1 marked bad without a right answer")


@pytest.mark.slow
def test_marked_answers_become_an_eval_set_that_runs(roost_here, tmp_path):
    recorded()
    target = tmp_path / "mine.jsonl"
    built = roost_here("eval", "--from-history", "--out", str(target))
    assert built.returncode == 0 and built.stdout.strip() == str(target), built.stderr
    assert f"roost eval MODEL [MODEL ...] --set {target}" in built.stderr
    items = [json.loads(line) for line in target.read_text().splitlines()]
    assert items == [
        {"id": "20261201-100000-abc123#1", "prompt": "What is the capital of France?", "contains": "Paris",
         "system": "Be brief."},
        # A good answer's check is its first sentence; the conversation before it goes along.
        {"id": "20261201-100000-abc123#2", "prompt": "And of Japan?", "contains": "Tokyo", "system": "Be brief.",
         "messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Lyon."}]},
    ]
    assert eval_set.load(str(target))[1][1].before[1] == {"role": "assistant", "content": "Lyon."}
    ran = roost_here("eval", "demo", "--set", str(target), "--json")
    assert ran.returncode == 0, ran.stderr
    answers = json.loads(ran.stdout)["models"][0]["answers"]
    assert [a["id"] for a in answers] == [i["id"] for i in items]
    assert answers[1]["correct"] == ("tokyo" in answers[1]["output"].lower())
    assert roost_here("eval", "--from-history").stdout.strip() == os.path.join(paths.data_dir(), "from-history.jsonl")


@pytest.mark.slow
def test_marks_in_the_chat_app_are_kept_in_the_conversation(demo_gguf):
    async def scenario(app, screen, pilot):
        footer = lambda: {k.key for k in screen.query("FooterKey")}  # noqa: E731
        assert "ctrl+g" not in footer()  # nothing to mark yet
        await ask_and_wait(screen, pilot, "What is the capital of France?")
        await pilot.press("ctrl+g")
        await ask_and_wait(screen, pilot, "And of Japan?")
        await pilot.press("ctrl+f")
        await until(pilot, lambda: isinstance(app.screen, RightAnswerScreen))
        await pilot.press("escape")  # no mark after all
        await until(pilot, lambda: app.screen is screen)
        await pilot.press("ctrl+f")
        await until(pilot, lambda: isinstance(app.screen, RightAnswerScreen))
        await pilot.press(*"Tokyo", "enter")
        await until(pilot, lambda: app.screen is screen)
        saved = screen.session.saved.read()
        assert saved.marks == {0: {"good": True, "answer": None}, 1: {"good": False, "answer": "Tokyo"}}
        assert saved.meta["sampling"]["temperature"] == 0 and saved.meta["sampling"]["max_tokens"] == 60
        assert "Marked the last answer bad, with the right answer" in notes(app)
        assert {"ctrl+g", "ctrl+f"} <= footer()  # the footer offers the keys

    chat(scenario, demo_gguf, size=(140, 30))
    items, _ = history.eval_records()
    assert [i["contains"] for i in items][1] == "Tokyo"


@pytest.mark.slow
def test_the_history_screen_exports_the_highlighted_conversation(demo_gguf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        await pilot.press("e")
        await until(pilot, lambda: any(n.startswith("Exported to ") for n in notes(app)))
        target = tmp_path / f"roost-{screen.session.saved.id}.md"
        assert f"Exported to {target}" in notes(app)
        assert target.read_text() == history.markdown(screen.session.saved)
        assert "## You\n\nWhat is the capital of Japan?" in target.read_text()
        await pilot.press("escape")

    chat(scenario, demo_gguf, size=(100, 30))


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_marks_and_export_by_keyboard_in_tmux(tmp_path):
    """Ctrl+G, Ctrl+F with the right answer typed, and E in the saved chats, through tmux
    at 80x24 as over SSH."""
    socket = f"roost-history-{os.getpid()}"

    def tmux(*args):
        return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True)

    def wait_for(*needles, timeout=90.0):
        deadline = time.monotonic() + timeout
        while not all(n in (text := tmux("capture-pane", "-t", "chat", "-p").stdout) for n in needles):
            assert time.monotonic() < deadline, f"never saw {needles!r}; the screen was:\n{text}"
            time.sleep(0.2)

    env = " ".join(f"{k}={os.environ[k]}" for k in ("ROOST_HISTORY_DIR", "ROOST_DATA_DIR"))
    command = f"{env} TERM=screen-256color {sys.executable} -m roost chat demo --temperature 0"
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", "-c", str(tmp_path), command)
    try:
        wait_for("Ask something")
        tmux("send-keys", "-t", "chat", "What is the capital of Japan?", "Enter")
        wait_for("Tokyo", "prompt ")
        tmux("send-keys", "-t", "chat", "C-g")
        wait_for("Marked the last answer good")
        tmux("send-keys", "-t", "chat", "C-f")
        wait_for("marked bad")
        tmux("send-keys", "-t", "chat", "Tokyo, Japan", "Enter")
        wait_for("Marked the last answer bad")
        tmux("send-keys", "-t", "chat", "C-o")
        wait_for("Saved conversations")
        tmux("send-keys", "-t", "chat", "e")
        wait_for("Exported to")
    finally:
        tmux("kill-server")
    [summary] = history.conversations()
    assert history.Conversation(summary.path).read().marks == {0: {"good": False, "answer": "Tokyo, Japan"}}
    assert "*marked bad; the right answer: Tokyo, Japan*" in (tmp_path / f"roost-{summary.id}.md").read_text()


def test_rm_asks_at_a_terminal(tmp_path):
    """At a terminal, rm asks first: no keeps the file, Enter (yes) removes it."""
    import pty

    from conftest import ROOT

    first, _ = recorded()
    for answer, kept in ((b"n\n", True), (b"\n", False)):
        master, slave = pty.openpty()
        os.write(master, answer)
        done = subprocess.run([sys.executable, "-m", "roost", "history", "rm", "abc1"], stdin=slave,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        os.close(slave), os.close(master)
        assert "Remove conversation 20261201-100000-abc123 for good? [Y/n]" in done.stderr
        assert os.path.exists(first.path) == kept and done.returncode == (1 if kept else 0)
