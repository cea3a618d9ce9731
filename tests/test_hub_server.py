"""The real huggingface_hub client (2.4.0) and `hf` CLI against the local Hub stand-in.

huggingface_hub reads HF_ENDPOINT (and HF_HOME, HF_HUB_OFFLINE) when it is first
imported, so every client call here runs in a fresh Python process with its own
environment (see `client()`); the pytest process never imports huggingface_hub.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import HubServer  # noqa: E402

REPO = "roost-test/tiny-GGUF"
GATED = "roost-test/gated-GGUF"
GGUF = "model-Q4_K_M.gguf"
BIG = "model-Q8_0.gguf"
MiB = 1024 * 1024
HF_CHUNK = 10 * MiB  # huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
TOKEN = "hf_roost_test_token"
HF_CLI = os.path.join(os.path.dirname(sys.executable), "hf")


def _write(path: str, data: bytes) -> bytes:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


@pytest.fixture
def repos(tmp_path):
    root = tmp_path / "hub"
    files = {
        f"{REPO}/{GGUF}": os.urandom(3 * MiB + 12345),
        f"{REPO}/README.md": b"# tiny\n",
        f"{REPO}/config.json": b'{"n_ctx": 2048}\n',
        f"{REPO}/extra/notes.txt": b"notes\n",
        f"{GATED}/{GGUF}": os.urandom(2 * MiB),
    }
    for rel, data in files.items():
        _write(str(root / rel), data)
    return str(root), files


@pytest.fixture
def hub(repos):
    root, _ = repos
    with HubServer(root, lifetime=300) as server:
        server.gated.add(GATED)
        server.tokens.add(TOKEN)
        yield server


@pytest.fixture
def hf_home(tmp_path):
    path = tmp_path / "hf_home"
    path.mkdir()
    return str(path)


def client_env(hub: HubServer, hf_home: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "ACTIONS_ID_TOKEN_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=hf_home,
        HF_HUB_DISABLE_UPDATE_CHECK="1",  # the `hf` CLI would otherwise ask PyPI
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("GITHUB_ACTIONS", None)
    env.update(extra)
    return env


_PRELUDE = """
import json, sys
def _main():
{body}
try:
    _out = {{"ok": True, "value": _main()}}
except BaseException as e:
    _out = {{"ok": False, "type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
             "message": str(e)}}
print("\\n@@RESULT@@" + json.dumps(_out))
"""


def client(hub: HubServer, hf_home: str, body: str, timeout: float = 120, **env: str) -> dict:
    """Run `body` (the body of a function; its return value must be JSON-able) in a
    fresh interpreter pointed at the stand-in. Returns {"ok": True, "value": ...} or
    {"ok": False, "type": exception class name, "mro": [...], "message": ...}."""
    code = _PRELUDE.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))
    proc = subprocess.run([sys.executable, "-c", code], env=client_env(hub, hf_home, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    marker = proc.stdout.rfind("@@RESULT@@")
    assert marker >= 0, f"client crashed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout[marker + len("@@RESULT@@"):].strip())
    result["stderr"] = proc.stderr
    return result


def download(hub, hf_home, filename=GGUF, repo=REPO, **env) -> dict:
    return client(hub, hf_home, f"""
        from huggingface_hub import hf_hub_download
        return hf_hub_download({repo!r}, {filename!r})
    """, **env)


def resolve_requests(hub: HubServer, method: str | None = None) -> list[tuple[str, str, dict]]:
    return [r for r in hub.requests if "/resolve/" in r[1] and (method is None or r[0] == method)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repo_cache(hf_home: str, repo: str = REPO) -> str:
    return os.path.join(hf_home, "hub", "models--" + repo.replace("/", "--"))


# -- the server speaks HTTP the way the client expects ------------------------------

def _http(hub: HubServer, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.url.rsplit(":", 1)[1]), timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_resolve_headers_ranges_and_errors(hub, repos):
    _, files = repos
    data = files[f"{REPO}/{GGUF}"]
    resp, body = _http(hub, "HEAD", f"/{REPO}/resolve/main/{GGUF}")
    assert resp.status == 200 and body == b""
    assert resp.getheader("ETag") == f'"{sha256(data)}"'
    assert resp.getheader("X-Linked-Etag") == f'"{sha256(data)}"'
    assert resp.getheader("X-Linked-Size") == str(len(data))
    assert resp.getheader("Content-Length") == str(len(data))
    assert len(resp.getheader("X-Repo-Commit")) == 40
    assert not [h for h in resp.headers if h.lower().startswith("x-xet")]  # plain HTTP, never Xet

    resp, body = _http(hub, "GET", f"/{REPO}/resolve/main/{GGUF}", {"Range": "bytes=100-"})
    assert resp.status == 206 and body == data[100:]
    assert resp.getheader("Content-Range") == f"bytes 100-{len(data) - 1}/{len(data)}"
    resp, body = _http(hub, "GET", f"/{REPO}/resolve/main/{GGUF}", {"Range": "bytes=10-19"})
    assert resp.status == 206 and body == data[10:20]
    resp, _ = _http(hub, "GET", f"/{REPO}/resolve/main/{GGUF}", {"Range": f"bytes={len(data)}-"})
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{len(data)}"

    # a plain (non-LFS) file: git blob sha1 as ETag, no X-Linked-*
    readme = files[f"{REPO}/README.md"]
    resp, body = _http(hub, "GET", f"/{REPO}/resolve/main/README.md")
    assert body == readme and resp.getheader("X-Linked-Etag") is None
    assert resp.getheader("ETag") == '"%s"' % hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()

    resp, _ = _http(hub, "HEAD", f"/nobody/nothing/resolve/main/{GGUF}")
    assert (resp.status, resp.getheader("X-Error-Code")) == (404, "RepoNotFound")
    resp, _ = _http(hub, "HEAD", f"/{REPO}/resolve/main/missing.gguf")
    assert (resp.status, resp.getheader("X-Error-Code")) == (404, "EntryNotFound")
    assert resp.getheader("X-Repo-Commit")
    resp, _ = _http(hub, "HEAD", f"/{GATED}/resolve/main/{GGUF}")
    assert (resp.status, resp.getheader("X-Error-Code")) == (401, "GatedRepo")
    resp, _ = _http(hub, "HEAD", f"/{GATED}/resolve/main/{GGUF}", {"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200

    assert ("GET", f"/{REPO}/resolve/main/{GGUF}") in [(m, p) for m, p, _ in hub.requests]
    assert any(h.get("range") == "bytes=100-" for _, _, h in hub.requests)


def test_server_stops_itself(repos):
    root, _ = repos
    server = HubServer(root, lifetime=0.5).start()
    port = int(server.url.rsplit(":", 1)[1])
    time.sleep(1.5)
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/api/models/x/y")
    server.stop()  # idempotent


# -- HfApi ------------------------------------------------------------------------

def test_model_info_with_files_metadata(hub, hf_home, repos):
    _, files = repos
    r = client(hub, hf_home, f"""
        from huggingface_hub import HfApi
        api = HfApi()
        def sib(s):
            return {{"rfilename": s.rfilename, "size": s.size, "blob_id": s.blob_id,
                     "lfs": dict(s.lfs) if s.lfs else None}}
        full = api.model_info({REPO!r}, files_metadata=True)
        bare = api.model_info({REPO!r})
        return {{"id": full.id, "sha": full.sha, "gated": full.gated,
                 "full": [sib(s) for s in full.siblings], "bare": [sib(s) for s in bare.siblings],
                 "gated_repo": api.model_info({GATED!r}).gated}}
    """)
    assert r["ok"], r
    info = r["value"]
    assert info["id"] == REPO and len(info["sha"]) == 40 and info["gated"] is False
    assert info["gated_repo"] == "manual"  # gated repos' metadata stays public, as on the Hub
    full = {s["rfilename"]: s for s in info["full"]}
    assert set(full) == {GGUF, "README.md", "config.json", "extra/notes.txt"}
    gguf = files[f"{REPO}/{GGUF}"]
    assert full[GGUF]["size"] == len(gguf)
    assert full[GGUF]["lfs"]["sha256"] == sha256(gguf)
    assert full[GGUF]["lfs"]["size"] == len(gguf)
    assert full["README.md"]["lfs"] is None and full["README.md"]["size"] == len(b"# tiny\n")
    assert all(s["size"] is None and s["lfs"] is None for s in info["bare"])
    assert {s["rfilename"] for s in info["bare"]} == set(full)
    paths = [p for m, p, _ in hub.requests if p.startswith("/api/models/")]
    assert f"/api/models/{REPO}?blobs=true" in paths and f"/api/models/{REPO}" in paths


def test_list_repo_files_and_tree(hub, hf_home, repos):
    _, files = repos
    r = client(hub, hf_home, f"""
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile
        api = HfApi()
        top = [(type(e).__name__, e.path) for e in api.list_repo_tree({REPO!r})]
        deep = [{{"path": e.path, "size": e.size, "lfs": dict(e.lfs) if e.lfs else None,
                  "xet_hash": e.xet_hash}}
                for e in api.list_repo_tree({REPO!r}, recursive=True) if isinstance(e, RepoFile)]
        return {{"files": api.list_repo_files({REPO!r}), "top": top, "deep": deep}}
    """)
    assert r["ok"], r
    v = r["value"]
    assert sorted(v["files"]) == ["README.md", "config.json", "extra/notes.txt", GGUF]
    assert sorted(map(tuple, v["top"])) == sorted([("RepoFile", "README.md"), ("RepoFile", "config.json"),
                                                   ("RepoFolder", "extra"), ("RepoFile", GGUF)])
    deep = {e["path"]: e for e in v["deep"]}
    gguf = files[f"{REPO}/{GGUF}"]
    assert deep[GGUF]["lfs"]["sha256"] == sha256(gguf) and deep[GGUF]["size"] == len(gguf)
    assert deep["config.json"]["lfs"] is None
    assert all(e["xet_hash"] is None for e in v["deep"])
    assert any(p.startswith(f"/api/models/{REPO}/tree/main?recursive=true") for _, p, _ in hub.requests)


# -- hf_hub_download ---------------------------------------------------------------

def test_download_fills_the_cache_layout(hub, hf_home, repos):
    _, files = repos
    r = download(hub, hf_home)
    assert r["ok"], r
    data = files[f"{REPO}/{GGUF}"]
    cache = repo_cache(hf_home)
    commit = open(os.path.join(cache, "refs", "main")).read()
    assert len(commit) == 40
    assert r["value"] == os.path.join(cache, "snapshots", commit, GGUF)
    assert os.path.islink(r["value"])
    assert os.path.realpath(r["value"]) == os.path.join(cache, "blobs", sha256(data))
    assert open(r["value"], "rb").read() == data
    assert not glob.glob(os.path.join(cache, "blobs", "*.incomplete"))
    # one HEAD for the metadata, one plain GET for the bytes; nothing Xet
    assert [m for m, _, _ in resolve_requests(hub)] == ["HEAD", "GET"]
    assert not any("xet" in p.lower() for _, p, _ in hub.requests)

    # a second call is answered from the cache after a HEAD, without a GET
    hub.requests.clear()
    again = download(hub, hf_home)
    assert again["value"] == r["value"]
    assert [m for m, _, _ in resolve_requests(hub)] == ["HEAD"]


def test_small_file_cut_midway_restarts_from_zero_within_the_call(hub, hf_home, repos):
    """hf_hub_download retries a broken transfer inside the same call (http_get, up to 5
    times, 1 s apart), resuming from the bytes it has *written*. It reads the body in
    10 MiB chunks (constants.DOWNLOAD_CHUNK_SIZE), so a cut inside the first 10 MiB loses
    everything and the retry asks for the whole file again, without a Range header."""
    _, files = repos
    data = files[f"{REPO}/{GGUF}"]
    hub.cut_after(GGUF, len(data) // 2)
    r = download(hub, hf_home)
    assert r["ok"], r
    assert open(r["value"], "rb").read() == data
    gets = resolve_requests(hub, "GET")
    assert len(gets) == 2
    assert [h.get("range") for _, _, h in gets] == [None, None]
    assert "Trying to resume download" in r["stderr"]


def test_large_file_cut_midway_resumes_with_a_range_request(hub, hf_home, repos):
    root, _ = repos
    data = _write(os.path.join(root, REPO, BIG), os.urandom(2 * HF_CHUNK + 3 * MiB))
    half = len(data) // 2  # past the first 10 MiB chunk
    hub.cut_after(BIG, half)
    r = download(hub, hf_home, BIG)
    assert r["ok"], r
    assert open(r["value"], "rb").read() == data
    gets = resolve_requests(hub, "GET")
    assert len(gets) == 2
    assert gets[0][2].get("range") is None
    # resumes from the last whole 10 MiB chunk it had written, not from `half`
    assert gets[1][2].get("range") == f"bytes={(half // HF_CHUNK) * HF_CHUNK}-"


def test_killed_download_is_not_resumed_by_the_next_call(hub, hf_home, repos):
    """Each call downloads into its own `<sha256>.<random>.incomplete`; a call that fails
    deletes it, but a process killed mid-transfer leaves it behind, and the next call
    neither resumes from it nor removes it: it starts again from byte 0."""
    root, _ = repos
    data = _write(os.path.join(root, REPO, BIG), os.urandom(2 * HF_CHUNK + 3 * MiB))
    reached = hub.stall_after(BIG, HF_CHUNK + MiB)
    code = f"from huggingface_hub import hf_hub_download; hf_hub_download({REPO!r}, {BIG!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=client_env(hub, hf_home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert reached.wait(60), "the client never got to the stall point"
        blobs = os.path.join(repo_cache(hf_home), "blobs")
        deadline = time.time() + 10
        while time.time() < deadline:
            partial = glob.glob(os.path.join(blobs, "*.incomplete"))
            if partial and os.path.getsize(partial[0]) >= HF_CHUNK:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
        hub.release()
    assert len(partial) == 1 and os.path.basename(partial[0]).startswith(sha256(data) + ".")
    assert os.path.getsize(partial[0]) == HF_CHUNK

    hub.requests.clear()
    r = download(hub, hf_home, BIG)
    assert r["ok"], r
    assert open(r["value"], "rb").read() == data
    assert [h.get("range") for _, _, h in resolve_requests(hub, "GET")] == [None]
    assert glob.glob(os.path.join(blobs, "*.incomplete")) == partial  # orphan stays


def test_corrupted_bytes_are_cached_without_complaint(hub, hf_home, repos):
    """hf_hub_download 2.4.0 checks only the size of a download, never its sha256: bytes
    that do not match the advertised ETag are stored under blobs/<advertised sha256> and
    returned, no exception, no warning; later calls keep serving them from the cache."""
    _, files = repos
    data = files[f"{REPO}/{GGUF}"]
    hub.corrupt(GGUF)
    r = download(hub, hf_home)
    assert r["ok"], r
    got = open(r["value"], "rb").read()
    assert len(got) == len(data) and got != data
    assert sha256(got) != sha256(data)
    assert os.path.basename(os.path.realpath(r["value"])) == sha256(data)  # named for the good hash
    assert "sha256" not in r["stderr"].lower() and "consistency" not in r["stderr"].lower()

    hub.requests.clear()
    again = download(hub, hf_home)
    assert again["ok"] and open(again["value"], "rb").read() == got
    assert [m for m, _, _ in resolve_requests(hub)] == ["HEAD"]  # not fetched again


def test_missing_repo_and_missing_file(hub, hf_home):
    r = download(hub, hf_home, GGUF, repo="nobody/nothing")
    assert not r["ok"] and r["type"] == "RepositoryNotFoundError", r
    r = client(hub, hf_home, """
        from huggingface_hub import HfApi
        return HfApi().model_info("nobody/nothing")
    """)
    assert not r["ok"] and r["type"] == "RepositoryNotFoundError", r

    r = download(hub, hf_home, "missing.gguf")
    assert not r["ok"] and r["type"] == "RemoteEntryNotFoundError", r
    assert "EntryNotFoundError" in r["mro"] and "HfHubHTTPError" in r["mro"]
    # the client remembers the miss under .no_exist/<commit>/
    assert glob.glob(os.path.join(repo_cache(hf_home), ".no_exist", "*", "missing.gguf"))


def test_gated_repo_needs_a_token(hub, hf_home, repos):
    _, files = repos
    r = download(hub, hf_home, repo=GATED)
    assert not r["ok"] and r["type"] == "GatedRepoError", r
    assert "RepositoryNotFoundError" in r["mro"]
    r = download(hub, hf_home, repo=GATED, HF_TOKEN="hf_not_a_known_token")
    assert not r["ok"] and r["type"] == "GatedRepoError", r

    hub.requests.clear()
    r = download(hub, hf_home, repo=GATED, HF_TOKEN=TOKEN)
    assert r["ok"], r
    assert open(r["value"], "rb").read() == files[f"{GATED}/{GGUF}"]
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in resolve_requests(hub))


def test_offline_mode_serves_the_cache_without_any_request(hub, hf_home, repos):
    _, files = repos
    first = download(hub, hf_home)
    assert first["ok"], first
    hub.requests.clear()
    r = download(hub, hf_home, HF_HUB_OFFLINE="1")
    assert r["ok"], r
    assert r["value"] == first["value"]
    assert open(r["value"], "rb").read() == files[f"{REPO}/{GGUF}"]
    r = download(hub, hf_home, "config.json", HF_HUB_OFFLINE="1")
    assert not r["ok"] and r["type"] == "LocalEntryNotFoundError", r
    assert hub.requests == []


def test_hf_download_cli(hub, hf_home, repos):
    _, files = repos
    assert os.path.exists(HF_CLI), HF_CLI
    proc = subprocess.run([HF_CLI, "download", REPO, GGUF], env=client_env(hub, hf_home),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = repo_cache(hf_home)
    commit = open(os.path.join(cache, "refs", "main")).read()
    path = os.path.join(cache, "snapshots", commit, GGUF)
    assert path in proc.stdout
    assert open(path, "rb").read() == files[f"{REPO}/{GGUF}"]
    assert [m for m, _, _ in resolve_requests(hub)] == ["HEAD", "GET"]
    assert not any("pypi" in p for _, p, _ in hub.requests)

    # and the CLI's error for a missing repo
    proc = subprocess.run([HF_CLI, "download", "nobody/nothing", GGUF], env=client_env(hub, hf_home),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "not found" in (proc.stdout + proc.stderr).lower()
