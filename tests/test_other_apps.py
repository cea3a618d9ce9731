"""Models other apps keep on disk, read in place: each store laid out as its app lays it
out (Ollama: manifest/paths.go, manifest/manifest.go, types/model/name.go; LM Studio: its
"Import Models" docs and lms's modelsFolder.ts; llama.cpp: common.cpp's
fs_get_cache_directory and -hf's OWNER_REPO_FILE names), with the real demo GGUF inside
through links, and pointed at with each app's own variable."""

import hashlib
import json
import os

import pytest

from conftest import ROOT, one_line, roost
from roost import paths

OLLAMA_NAME = "ollama:llama3.2:3b"
HF_NAME = "ollama:hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1"
LMS_NAME = "lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF"
LLAMA_FILE = "bartowski_SmolLM2-135M-Instruct-GGUF_SmolLM2-135M-Instruct-Q4_1.gguf"
LLAMA_NAME = f"llama.cpp:{LLAMA_FILE}"
QUESTION = "What is the capital of Japan?"


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def blob(store, d: str):
    return store / "blobs" / d.replace(":", "-")


def ollama_model(store, name_path: str, model_blob: str | None, config: dict | None = None,
                 blob_from=None) -> None:
    """A manifest at manifests/HOST/NAMESPACE/MODEL/TAG, as `ollama pull` writes one: the
    config blob, the GGUF as the model layer (a link to blob_from), and a template layer."""
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": digest(name_path + "t"), "size": 10}]
    if model_blob:
        layers.insert(0, {"mediaType": "application/vnd.ollama.image.model", "digest": model_blob, "size": 1})
        if blob_from:
            os.symlink(blob_from, blob(store, model_blob))
    cfg = digest(name_path + "config")
    blob(store, cfg).write_text(json.dumps(config or {"model_format": "gguf", "file_type": "Q4_1"}))
    blob(store, digest(name_path + "t")).write_text("{{ .Prompt }}")
    manifest = store / "manifests" / name_path
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg, "size": 1},
        "layers": layers}))


@pytest.fixture
def stores(tmp_path, demo_gguf, monkeypatch):
    """All three apps' stores with the demo model in each, and what is broken in them."""
    ollama = tmp_path / "ollama-models"
    (ollama / "blobs").mkdir(parents=True)
    gguf = digest("smollm2")
    ollama_model(ollama, "registry.ollama.ai/library/llama3.2/3b", gguf, blob_from=demo_gguf)
    # The same blob under a second name, pulled from the Hub: Ollama keeps one copy.
    ollama_model(ollama, "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF/Q4_1", gguf)
    (ollama / "manifests/registry.ollama.ai/library/broken").mkdir(parents=True)
    (ollama / "manifests/registry.ollama.ai/library/broken/latest").write_text("{not json")
    ollama_model(ollama, "registry.ollama.ai/library/gone/latest", digest("never downloaded"))
    ollama_model(ollama, "registry.ollama.ai/library/gpt-oss/120b-cloud", None,  # a cloud model: no weights here
                 {"remote_host": "https://ollama.com:443", "remote_model": "gpt-oss:120b"})

    lms_home = tmp_path / "lmstudio"
    repo = lms_home / "models" / "lmstudio-community" / "SmolLM2-135M-Instruct-GGUF"
    repo.mkdir(parents=True)
    os.symlink(demo_gguf, repo / "SmolLM2-135M-Instruct-Q4_1.gguf")
    (repo / "mmproj-SmolLM2-F16.gguf").write_bytes(b"GGUF")  # a vision projector: not a model alone
    two = lms_home / "models" / "someone" / "Two-GGUF"
    two.mkdir(parents=True)
    for f in ("Two-Q4_1.gguf", "Two-Q8_0.gguf"):
        os.symlink(demo_gguf, two / f)

    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    os.symlink(demo_gguf, llama / LLAMA_FILE)
    (llama / f"{LLAMA_FILE}.etag").write_text('"abc"')
    (llama / "manifest=bartowski=SmolLM2-135M-Instruct-GGUF=Q4_1.json").write_text(
        json.dumps({"ggufFile": {"rfilename": "SmolLM2-135M-Instruct-Q4_1.gguf", "lfs": {"sha256": "0" * 64}}}))

    for name, value in (("OLLAMA_MODELS", ollama), ("ROOST_LMSTUDIO_HOME", lms_home), ("LLAMA_CACHE", llama)):
        monkeypatch.setenv(name, str(value))
    return tmp_path


def snapshot(root) -> dict:
    """Every path under root with what lstat says of it, and every link's target's too."""
    seen = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            seen[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
            if os.path.islink(p):
                target = os.stat(p)
                seen[p + " ->"] = (os.readlink(p), target.st_size, target.st_mtime_ns)
    return seen


def test_ls_lists_each_apps_models_with_where_they_came_from(stores, roost_here, demo_gguf):
    result = roost_here("ls", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    assert sorted(listed) == sorted([
        OLLAMA_NAME, HF_NAME, LMS_NAME, "lmstudio:someone/Two-GGUF/Two-Q4_1.gguf",
        "lmstudio:someone/Two-GGUF/Two-Q8_0.gguf", LLAMA_NAME])  # the broken, gone and cloud ones skipped
    size = os.path.getsize(demo_gguf)
    ollama = listed[OLLAMA_NAME]
    assert ollama["source"] == "ollama" and ollama["quant"] == "Q4_1" and ollama["size"] == size
    assert ollama["path"] == str(stores / "ollama-models" / "blobs" / ("sha256-" + hashlib.sha256(b"smollm2").hexdigest()))
    assert ollama["fits"] != "damaged"
    assert listed[LMS_NAME]["source"] == "lm-studio" and listed[LMS_NAME]["quant"] == "Q4_1"
    assert listed["lmstudio:someone/Two-GGUF/Two-Q8_0.gguf"]["quant"] == "Q8_0"
    assert listed[LLAMA_NAME]["source"] == "llama.cpp" and listed[LLAMA_NAME]["path"].endswith(LLAMA_FILE)


def test_ls_table_has_a_source_column(stores, roost_here):
    result = roost_here("ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:6] == ["model", "quant", "size", "fits", "now", "source"]
    row = next(r for r in rows if r.startswith(OLLAMA_NAME + " "))
    assert " ollama " in row
    assert any(r.startswith(LMS_NAME + " ") and " lm-studio " in r for r in rows)
    assert any(r.startswith(LLAMA_NAME + " ") and " llama.cpp " in r for r in rows)


@pytest.mark.parametrize("name", [OLLAMA_NAME, pytest.param(LMS_NAME, marks=pytest.mark.slow),
                                  pytest.param(LLAMA_NAME, marks=pytest.mark.slow)])
def test_runs_by_the_other_apps_name(stores, name):
    """A real answer from llama.cpp, loading the file where the other app keeps it (an
    Ollama blob has no .gguf suffix: the engine goes by the magic bytes)."""
    result = roost("run", name, QUESTION, "--temperature", "0", "-n", "24", "--json")
    assert result.returncode == 0, result.stderr
    assert "Tokyo" in json.loads(result.stdout)["text"]


def test_ollama_names_read_as_ollama_reads_them(stores):
    from roost.models import catalog

    path = catalog.resolve(OLLAMA_NAME).path
    for same in ("ollama:registry.ollama.ai/library/llama3.2:3b", "ollama:library/Llama3.2:3B", HF_NAME):
        assert catalog.resolve(same).path == path
    assert catalog.resolve(OLLAMA_NAME).source == "ollama"


def test_fit_takes_the_other_apps_name(stores, roost_here):
    result = roost_here("fit", OLLAMA_NAME, "--json", machine="cpu_only.json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pick"]


@pytest.mark.parametrize("name,says", [
    (OLLAMA_NAME, "`ollama rm llama3.2:3b`"),
    (HF_NAME, "`ollama rm hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1`"),
    (LMS_NAME, "in LM Studio (My Models)"),
    (LLAMA_NAME, "if llama.cpp no longer needs it"),
])
def test_rm_refuses_another_apps_files_and_changes_nothing(stores, roost_here, demo_gguf, name, says):
    before = snapshot(stores), os.stat(demo_gguf).st_mtime_ns
    line = one_line(roost_here("rm", name), "roost does not remove another app's files", says)
    assert name in line
    assert (snapshot(stores), os.stat(demo_gguf).st_mtime_ns) == before


@pytest.mark.parametrize("name,app", [(OLLAMA_NAME, "Ollama"), (LMS_NAME, "LM Studio"), (LLAMA_NAME, "llama.cpp")])
def test_pull_of_another_apps_model_says_it_is_there(stores, roost_here, name, app):
    before = snapshot(stores)
    one_line(roost_here("pull", name, "--yes"), f"{name} is already on disk, in {app}'s store", f"roost run {name}")
    assert snapshot(stores) == before


def test_rm_refuses_another_apps_file_by_its_path(stores, roost_here):
    path = json.loads(roost_here("ls", "--json").stdout)
    blob_path = next(m["path"] for m in path if m["name"] == OLLAMA_NAME)
    before = snapshot(stores)
    one_line(roost_here("rm", blob_path), "is Ollama's", "`ollama rm ")
    assert snapshot(stores) == before


def test_a_name_the_app_does_not_have_is_one_line(stores, roost_here):
    one_line(roost_here("run", "ollama:nope:7b", "hi"), "Ollama has no model 'nope:7b' here", OLLAMA_NAME)
    one_line(roost_here("run", "lmstudio:someone/Two-GGUF", "hi"), "names 2 files",
             "lmstudio:someone/Two-GGUF/Two-Q4_1.gguf")
    one_line(roost_here("run", "llama.cpp:nothing.gguf", "hi"), "llama.cpp has no model")


def test_broken_stores_list_what_they_can(tmp_path, roost_here, demo_gguf):
    """A manifests folder of the wrong shape, a blob that is not a file, unreadable
    settings: skipped, with no traceback."""
    store = tmp_path / "ollama"
    (store / "blobs").mkdir(parents=True)
    (store / "manifests" / "registry.ollama.ai" / "library").mkdir(parents=True)
    (store / "manifests" / "registry.ollama.ai" / "stray-file").write_text("x")
    ollama_model(store, "registry.ollama.ai/library/dir-blob/latest", digest("dir"))
    blob(store, digest("dir")).mkdir()
    ollama_model(store, "registry.ollama.ai/library/bad-digest/latest", "md5:1234")
    # No file_type recorded and none in the tag: the quant is read from the GGUF's header.
    ollama_model(store, "registry.ollama.ai/library/ok/latest", digest("ok"), {"model_format": "gguf"},
                 blob_from=demo_gguf)
    lms = tmp_path / "lms"
    lms.mkdir()
    (lms / "settings.json").write_text("[1, 2")
    result = roost_here("ls", "--json", env={"OLLAMA_MODELS": str(store), "ROOST_LMSTUDIO_HOME": str(lms)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert [(m["name"], m["quant"]) for m in json.loads(result.stdout)] == [("ollama:ok:latest", "Q4_1")]


def test_model_list_offers_them(stores, monkeypatch):
    from roost.machine import hardware
    from roost.models import listing

    monkeypatch.setenv("ROOST_MACHINE", os.path.join(ROOT, "tests", "machines", "cpu_only.json"))
    offers = {o.name: o for o in listing.local_offers(hardware.detect(), 4096)}
    for name in (OLLAMA_NAME, LMS_NAME, LLAMA_NAME):
        assert offers[name].pick is not None and list(offers[name].local.values()) == [offers[name].files[0].file]
    assert "Ollama" in offers[OLLAMA_NAME].description


def test_where_each_store_is(tmp_path, monkeypatch):
    """Each app's own defaults and overrides (paths.py)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    for name in ("OLLAMA_MODELS", "ROOST_LMSTUDIO_HOME", "LLAMA_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert paths.ollama_models()[0] == str(tmp_path / ".ollama" / "models")
    monkeypatch.setenv("OLLAMA_MODELS", "/data/ollama")
    assert paths.ollama_models() == ["/data/ollama"]

    assert paths.lmstudio_models() == str(tmp_path / ".lmstudio" / "models")
    (tmp_path / ".cache" / "lm-studio").mkdir(parents=True)  # an older LM Studio's home
    assert paths.lmstudio_models() == str(tmp_path / ".cache" / "lm-studio" / "models")
    home = tmp_path / "elsewhere"
    home.mkdir()
    (tmp_path / ".lmstudio-home-pointer").write_text(f"{home}\n")
    assert paths.lmstudio_models() == str(home / "models")
    (home / "settings.json").write_text(json.dumps({"downloadsFolder": "/big/disk/models"}))
    assert paths.lmstudio_models() == "/big/disk/models"

    if os.sys.platform.startswith("linux"):
        assert paths.llama_cpp_cache() == str(tmp_path / ".cache" / "llama.cpp")
        monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
        assert paths.llama_cpp_cache() == "/xdg/llama.cpp"
    monkeypatch.setenv("LLAMA_CACHE", "/models/llama")
    assert paths.llama_cpp_cache() == "/models/llama"


def test_llama_cpp_cache_in_the_hugging_face_layout(tmp_path, roost_here, demo_gguf):
    """Newer llama.cpp, with LLAMA_CACHE set, keeps -hf downloads there in the Hugging Face
    layout (common/hf-cache.cpp)."""
    snap = tmp_path / "cache" / "models--bartowski--SmolLM2-135M-Instruct-GGUF" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    os.symlink(demo_gguf, snap / "SmolLM2-135M-Instruct-Q4_1.gguf")
    result = roost_here("ls", "--json", env={"LLAMA_CACHE": str(tmp_path / "cache")})
    assert [(m["name"], m["source"]) for m in json.loads(result.stdout)] == [
        ("llama.cpp:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_1.gguf", "llama.cpp")]


@pytest.mark.slow
def test_model_screen_lists_them_and_chats_with_one(stores, monkeypatch):
    """The chat app's model list shows another app's model as on disk; chosen, it loads
    from where that app keeps it and answers."""
    from test_tui_models import chat_answers_tokyo, choose, rows, run_app

    async def scenario(app, pilot):
        shown = rows(app.screen)
        for name in (OLLAMA_NAME, LMS_NAME, LLAMA_NAME):
            assert shown[name][-1] == "✓"  # on disk: nothing to download
        await choose(pilot, "llama3.2")
        chat = await chat_answers_tokyo(app, pilot)
        assert chat.session is not None

    run_app(scenario, monkeypatch, "cpu_only.json", engine="llama")
