"""pull / ls / rm / run against a real HTTP Hub stand-in on 127.0.0.1."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import GATED_REPO, NAME, ROOT, TINY_REPO, in_process, one_line, roost_hub
from roost.models import catalog


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_pull_by_name_then_run_ls_rm(hub, home, demo_gguf):
    pulled = roost_hub(hub, home, "pull", NAME, "--yes")
    assert pulled.returncode == 0, pulled.stderr
    path = pulled.stdout.strip().splitlines()[-1]
    assert path.startswith(str(home)) and sha256(path) == sha256(demo_gguf)
    assert "pick:" in pulled.stderr  # the planner's choice was shown before downloading

    ran = roost_hub(hub, home, "run", NAME, "What is the capital of Japan?", "--temperature", "0", "-n", "20",
                    env={"HF_HUB_OFFLINE": "1"})
    assert ran.returncode == 0 and "Tokyo" in ran.stdout, ran.stderr

    listed = json.loads(roost_hub(hub, home, "ls", "--json").stdout)
    assert [(d["name"], d["path"]) for d in listed] == [(NAME, path)]
    assert listed[0]["fits"] == "full"

    removed = roost_hub(hub, home, "rm", NAME)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert not os.path.exists(path)
    assert json.loads(roost_hub(hub, home, "ls", "--json").stdout) == []


def test_pull_any_repo_reads_the_header_remotely_to_pick(hub, home):
    pulled = roost_hub(hub, home, "pull", TINY_REPO, "--yes")
    assert pulled.returncode == 0, pulled.stderr
    assert "Q4_1" in pulled.stderr and "Q8_0" in pulled.stderr  # both ranked
    assert any(m == "GET" and "range" in {k.lower() for k in h} for m, _, h in hub.requests)
    by_file = roost_hub(hub, home, "pull", f"{TINY_REPO}:Tiny-Q8_0.gguf", "--yes")
    assert by_file.returncode == 0 and by_file.stdout.strip().endswith("Tiny-Q8_0.gguf")


@pytest.mark.slow
def test_cut_connection_is_resumed(hub, home, demo_gguf):
    entry = catalog.models()[NAME]
    hub.cut_after(entry.gguf[0].file, os.path.getsize(demo_gguf) // 2)
    pulled = roost_hub(hub, home, "pull", f"{NAME}:{entry.gguf[0].quant}", "--yes")
    assert pulled.returncode == 0, pulled.stderr
    assert sha256(pulled.stdout.strip().splitlines()[-1]) == sha256(demo_gguf)
    ranges = [h for m, p, h in hub.requests if m == "GET" and p.endswith(entry.gguf[0].file)
              and any(k.lower() == "range" for k in h)]
    assert ranges, "the second request resumed with a Range header"


def test_wrong_checksum_is_refused_and_removed(hub, home):
    entry = catalog.models()[NAME]
    hub.corrupt(entry.gguf[0].file)
    line = one_line(roost_hub(hub, home, "pull", f"{NAME}:{entry.gguf[0].quant}", "--yes"), "failed verification")
    assert "removed" in line
    assert json.loads(roost_hub(hub, home, "ls", "--json").stdout) == []
    leftovers = [f for _, _, files in os.walk(home) for f in files if f.endswith((".incomplete", ".gguf"))]
    assert leftovers == []


def test_missing_repo_and_file(hub, home):
    one_line(roost_hub(hub, home, "pull", "nobody/Nothing-GGUF", "--yes"), "no model repository nobody/Nothing-GGUF")
    one_line(roost_hub(hub, home, "pull", f"{TINY_REPO}:Tiny-Q2_K.gguf", "--yes"), "has no file Tiny-Q2_K.gguf")


def test_gated_repo_says_how_to_log_in_and_works_with_a_token(hub, home):
    one_line(roost_hub(hub, home, "pull", GATED_REPO, "--yes"), "gated", "HF_TOKEN")
    ok = roost_hub(hub, home, "pull", GATED_REPO, "--yes", env={"HF_TOKEN": "hf_good_token"})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_offline_uses_the_cache_and_says_when_it_cannot(hub, home):
    one_line(roost_hub(hub, home, "pull", NAME, "--yes", env={"HF_HUB_OFFLINE": "1"}), "HF_HUB_OFFLINE")
    assert roost_hub(hub, home, "pull", NAME, "--yes").returncode == 0
    before = len(hub.requests)
    again = roost_hub(hub, home, "pull", NAME, "--yes", env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and again.stdout.strip().startswith(str(home))
    assert len(hub.requests) == before  # nothing asked of the network


def test_run_asks_before_downloading(hub, home):
    one_line(roost_hub(hub, home, "run", NAME, "hi"), f"roost pull {NAME}", "--yes")
    ran = roost_hub(hub, home, "run", NAME, "What is the capital of Japan?", "--yes", "--temperature", "0", "-n", "20")
    assert ran.returncode == 0 and "Tokyo" in ran.stdout, ran.stderr


def test_disk_space_is_checked_before_any_download(hub, home, monkeypatch):
    import shutil

    from roost.models.download import DownloadError

    library = in_process(hub, home, monkeypatch)
    entry = catalog.models()[NAME]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(DownloadError, match=r"needs 0\.\d+ GB and .* has 0\.00 GB free"):
        library.pull(entry.gguf_repo, entry.gguf[0])
    assert not [r for r in hub.requests if r[0] == "GET" and r[1].endswith(".gguf")]


def test_cancel_removes_the_partial_file(hub, home, monkeypatch):
    from roost.backends.base import Cancel
    from roost.models.download import Cancelled

    library = in_process(hub, home, monkeypatch)
    entry = catalog.models()[NAME]
    cancel = Cancel()
    with pytest.raises(Cancelled):
        library.pull(entry.gguf_repo, entry.gguf[0], on_progress=lambda p: cancel.set(), cancel=cancel)
    leftovers = [f for _, _, files in os.walk(home) for f in files if f.endswith((".incomplete", ".gguf"))]
    assert leftovers == []


def test_split_files_are_listed_as_one(hub, home, monkeypatch, hub_root):
    split = hub_root / "roost-test" / "Split-GGUF"
    split.mkdir(exist_ok=True)
    for i in (1, 2):
        (split / f"Big-Q8_0-0000{i}-of-00002.gguf").write_bytes(b"GGUF" + bytes(1000 * i))
    (split / "Big-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(500))
    (split / "mmproj-f16.gguf").write_bytes(b"GGUF")  # a vision projector, not a model
    in_process(hub, home, monkeypatch)
    files = {f.quant: f for f in catalog.list_repo_gguf("roost-test/Split-GGUF")}
    assert set(files) == {"Q8_0", "Q4_K_M"}
    assert files["Q8_0"].parts == 2 and files["Q8_0"].size == 2 * 4 + 3000
    assert files["Q8_0"].files == ["Big-Q8_0-00001-of-00002.gguf", "Big-Q8_0-00002-of-00002.gguf"]


@pytest.mark.slow
def test_a_killed_download_leaves_nothing_behind_for_long(hub, home, demo_gguf):
    entry = catalog.models()[NAME]
    gguf = entry.gguf[0]
    hub.stall_after(gguf.file, 20 * 1024 * 1024)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "roost", "pull", f"{NAME}:{gguf.quant}", "--yes"], env=env,
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = []
    for _ in range(300):  # until the stalled transfer has written its partial file
        partial = [os.path.join(d, f) for d, _, fs in os.walk(home) for f in fs if f.endswith(".incomplete")]
        if partial and os.path.getsize(partial[0]) > 0:
            break
        proc.poll()
        __import__("time").sleep(0.1)
    proc.kill()  # as kill -9 would: no cleanup runs
    proc.wait()
    hub.release()
    assert partial and os.path.exists(partial[0])
    again = roost_hub(hub, home, "pull", f"{NAME}:{gguf.quant}", "--yes")
    assert again.returncode == 0, again.stderr
    assert not os.path.exists(partial[0])
    assert sha256(again.stdout.strip().splitlines()[-1]) == sha256(demo_gguf)


def test_gated_repo_refuses_the_remote_header_read_too(hub, home, hub_root, demo_gguf):
    gated = hub_root / "roost-test" / "Gated-Multi-GGUF"
    gated.mkdir(exist_ok=True)
    for name in ("Multi-Q4_1.gguf", "Multi-Q8_0.gguf"):
        if not (gated / name).exists():
            os.symlink(demo_gguf, gated / name)
    hub.gated.add("roost-test/Gated-Multi-GGUF")
    one_line(roost_hub(hub, home, "fit", "roost-test/Gated-Multi-GGUF"), "gated", "HF_TOKEN")
    ok = roost_hub(hub, home, "fit", "roost-test/Gated-Multi-GGUF", "--json", env={"HF_TOKEN": "hf_good_token"})
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["options"]) == 2, ok.stderr


@pytest.mark.slow
def test_a_named_gguf_quant_is_pulled_for_llama_cpp_on_a_mac(hub, home, demo_gguf):
    # NAME has an MLX build that fits a 64 GB Mac; a GGUF quant named by the user still
    # means llama.cpp, and the pull says so.
    entry = catalog.models()[NAME]
    q8 = next(g for g in entry.gguf if g.quant == "Q8_0")
    pulled = roost_hub(hub, home, "pull", f"{NAME}:Q8_0", "--yes", machine="m3max64.json")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().endswith(q8.file) and sha256(pulled.stdout.strip()) == sha256(demo_gguf)
    assert "engine: llama.cpp on Metal — Q8_0 is a GGUF quant" in pulled.stderr


@pytest.mark.slow
def test_pull_on_a_mac_says_why_it_takes_the_mlx_build(hub, home, mlx_repo):
    # no terminal to ask at: pulled, as a GGUF is
    pulled = roost_hub(hub, home, "pull", NAME, machine="m3max64.json")
    assert pulled.returncode == 0, pulled.stderr
    assert os.path.isfile(os.path.join(pulled.stdout.strip(), "config.json"))
    [line] = [ln for ln in pulled.stderr.splitlines() if ln.startswith("engine: ")]
    assert line.startswith("engine: MLX — its 8bit build (8.5 bits per weight) is about as good as llama.cpp's best")
    assert "(MLX builds)" in pulled.stderr and "pick: 8bit" in pulled.stderr  # the builds ranked, as GGUFs are
