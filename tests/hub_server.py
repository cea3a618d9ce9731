"""A local stand-in for the Hugging Face Hub, for tests: a threaded HTTP server on
127.0.0.1 that answers the endpoints huggingface_hub 2.4.0 really calls, with the
headers it relies on, plus faults on demand.

Layout
------
``root/<owner>/<name>/<files...>``: every folder two levels below ``root`` is a model
repo ``owner/name``; every file inside it (at any depth) is served. Files over 1 MB,
and every ``.gguf`` / ``.safetensors`` file, are served as LFS files: their ETag is the
sha256 of the content, ``model_info(files_metadata=True)`` and the tree API report an
``lfs`` block with that sha256, and their git blob id is that of the LFS pointer file.
Other files are "plain": their ETag and blob id are the git blob sha1. Hashes are
computed lazily and cached by (size, mtime), so files may be added before a request.
Each repo has one revision, "main", whose commit id is a sha1 derived from its content;
that id is accepted as a revision as well.

Endpoints (all found by reading huggingface_hub 2.4.0's source)
---------------------------------------------------------------
``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``
    ``HfApi.model_info``; ``?blobs=True`` (what ``files_metadata=True`` sends) adds
    ``size``, ``blobId`` and ``lfs {sha256,size,pointerSize}`` to each sibling.
``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...&expand=...``
    ``HfApi.list_repo_tree`` / ``HfApi.list_repo_files`` (the latter is
    ``list_repo_tree(recursive=True)``). One page, no ``Link: rel=next`` header.
``GET /api/agent-harnesses``
    fetched once a day by ``build_hf_headers`` (for the User-Agent) unless
    ``HF_HUB_DISABLE_TELEMETRY=1``; answered with an empty registry.
``HEAD|GET /{repo}/resolve/{rev}/{filename}``
    ``hf_hub_download`` / ``get_hf_file_metadata`` / ``hf download``. HEAD answers 200
    (no CDN redirect) with ``X-Repo-Commit``, ``ETag`` (quoted; sha256 for LFS files,
    git sha1 otherwise), ``X-Linked-Etag`` + ``X-Linked-Size`` for LFS files, and
    ``Content-Length``. GET honours ``Range: bytes=N-`` (also ``N-M`` and ``-K``) with
    206 + ``Content-Range``; an unsatisfiable range gets 416.

No ``X-Xet-Hash`` / ``X-Xet-Refresh-Route`` headers, no ``Link: rel=xet-auth`` and no
``xetHash`` in tree entries are ever sent, so the client (which has ``hf_xet``
installed) never takes the Xet path and downloads over plain HTTP through ``http_get``.

Errors use the ``X-Error-Code`` / ``X-Error-Message`` headers (HEAD has no body, so the
headers are what ``hf_raise_for_status`` maps) plus a JSON ``{"error": ...}`` body:
unknown repo -> 404 ``RepoNotFound`` (-> ``RepositoryNotFoundError``); unknown file ->
404 ``EntryNotFound`` with ``X-Repo-Commit`` (-> ``RemoteEntryNotFoundError``, a
subclass of ``EntryNotFoundError``); unknown revision -> 404 ``RevisionNotFound``; gated
repo without a known token -> 401 ``GatedRepo`` (-> ``GatedRepoError``).

Gating follows the real Hub: a gated repo's metadata (``model_info``, the tree) stays
public and says ``"gated": "manual"``; only file content (``/resolve/``) needs
``Authorization: Bearer <token in self.tokens>``. Set ``gate_metadata = True`` to gate
the API endpoints as well.

How to point huggingface_hub 2.4.0 at it
----------------------------------------
``huggingface_hub.constants`` reads ``HF_ENDPOINT`` once, *at import time*
(``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` are module constants; ``HfApi()``
and ``hf_hub_url`` use them). ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
``HF_HUB_DISABLE_UPDATE_CHECK`` are also read at import. ``HF_TOKEN`` is read on each
call. So set the environment *before* huggingface_hub is first imported; in a test
process that has already imported it, run the client in a subprocess with ``env=``
(what test_hub_server.py does), or pass ``endpoint=server.url`` explicitly to
``HfApi(endpoint=...)`` / ``hf_hub_download(..., endpoint=...)``. The ``hf`` CLI checks
PyPI for updates on start unless ``HF_HUB_DISABLE_UPDATE_CHECK=1``.

Faults (each applies to the next matching download GET only, then resets; a file
matches by its path in the repo or by its base name):
``cut_after(filename, n)`` sends the headers for the full body, then n bytes of it,
then closes the connection. ``corrupt(filename)`` sends bytes of the right length that
do not match the advertised sha256 / ETag. ``stall_after(filename, n)`` (an extra) sends
n bytes then holds the connection open until ``release()``, so a test can kill a client
process mid-download.

``requests`` logs ``(method, path-with-query, headers)`` for every request, headers as
a dict with lower-cased names (e.g. ``"range"``, ``"authorization"``).

The server binds 127.0.0.1 on a free port, runs on daemon threads, drops idle
connections after ``conn_timeout`` seconds and stops itself after ``lifetime`` seconds
at the latest (default 600) if ``stop()`` is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 1024 * 1024
LFS_SUFFIXES = (".gguf", ".safetensors")
CHUNK = 64 * 1024
DATE = "2024-01-01T00:00:00.000Z"
_INVERT = bytes(255 - i for i in range(256))  # corrupt(): every byte flipped, length kept


class _FileMeta:
    __slots__ = ("path", "size", "lfs", "sha256", "git_sha1", "blob_id", "pointer_size")

    def __init__(self, path: str, rel: str):
        self.path = path
        self.size = os.path.getsize(path)
        self.lfs = self.size > LFS_THRESHOLD or rel.lower().endswith(LFS_SUFFIXES)
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % self.size)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha256.update(chunk)
                sha1.update(chunk)
        self.sha256 = sha256.hexdigest()
        self.git_sha1 = sha1.hexdigest()
        if self.lfs:
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            ).encode()
            self.pointer_size = len(pointer)
            self.blob_id = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
        else:
            self.pointer_size = None
            self.blob_id = self.git_sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


class HubServer:
    def __init__(self, root: str, *, lifetime: float = 600.0, conn_timeout: float = 30.0):
        self.root = os.path.abspath(root)
        self.lifetime = lifetime
        self.conn_timeout = conn_timeout
        self.gated: set[str] = set()
        self.tokens: set[str] = set()
        self.gate_metadata = False
        self.requests: list[tuple[str, str, dict]] = []
        self._cuts: dict[str, int] = {}
        self._corrupts: set[str] = set()
        self._stalls: dict[str, tuple[int, float, threading.Event]] = {}
        self._released = threading.Event()
        self._meta: dict[str, tuple[tuple[int, int], _FileMeta]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "HubServer":
        if self._httpd is not None:
            return self
        hub = self

        class Handler(_Handler):
            server_hub = hub
            timeout = self.conn_timeout

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="hub-server", daemon=True)
        self._thread.start()
        if self.lifetime:
            self._timer = threading.Timer(self.lifetime, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            httpd, self._httpd = self._httpd, None
            timer, self._timer = self._timer, None
        self._released.set()  # free handlers held by stall_after()
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------
    def cut_after(self, filename: str, nbytes: int) -> None:
        with self._lock:
            self._cuts[filename] = int(nbytes)

    def corrupt(self, filename: str) -> None:
        with self._lock:
            self._corrupts.add(filename)

    def stall_after(self, filename: str, nbytes: int, seconds: float = 30.0) -> threading.Event:
        """Send nbytes of the next matching download GET, then hold the connection open
        without sending anything until `release()` (or `stop()`) is called or `seconds`
        pass, then close it. Returns an Event set once the nbytes have been sent, so a
        test can kill the client mid-download at a known point."""
        reached = threading.Event()
        with self._lock:
            self._stalls[filename] = (int(nbytes), float(seconds), reached)
            self._released.clear()
        return reached

    def release(self) -> None:
        self._released.set()

    def _take_faults(self, rel: str):
        names = (rel, rel.rsplit("/", 1)[-1])
        with self._lock:
            cut = next((self._cuts.pop(n) for n in names if n in self._cuts), None)
            stall = next((self._stalls.pop(n) for n in names if n in self._stalls), None)
            bad = False
            for n in names:
                if n in self._corrupts:
                    self._corrupts.discard(n)
                    bad = True
                    break
        return cut, stall, bad

    # -- repo contents ---------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> str | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
            return None
        path = os.path.join(self.root, *parts)
        return path if os.path.isdir(path) else None

    def repo_files(self, repo_id: str) -> list[str]:
        base = self.repo_dir(repo_id)
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                out.append(os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/"))
        return sorted(out)

    def file_meta(self, repo_id: str, rel: str) -> _FileMeta | None:
        base = self.repo_dir(repo_id)
        if base is None or any(p in ("", ".", "..") for p in rel.split("/")):
            return None
        path = os.path.join(base, *rel.split("/"))
        if not os.path.isfile(path):
            return None
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._meta.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        meta = _FileMeta(path, rel)
        with self._lock:
            self._meta[path] = (key, meta)
        return meta

    def commit(self, repo_id: str) -> str:
        h = hashlib.sha1(repo_id.encode())
        for rel in self.repo_files(repo_id):
            meta = self.file_meta(repo_id, rel)
            if meta is not None:
                h.update(f"{rel}\0{meta.blob_id}\n".encode())
        return h.hexdigest()


def _error_message(code: str, repo_id: str, rel: str = "", revision: str = "") -> str:
    if code == "RepoNotFound":
        return "Repository not found"
    if code == "EntryNotFound":
        return f"{rel} does not exist on \"{revision}\""
    if code == "RevisionNotFound":
        return f"Invalid rev id: {revision}"
    if code == "GatedRepo":
        return (f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.")
    return code


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "hub-stand-in"

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    # -- plumbing --------------------------------------------------------------------
    def _record(self) -> None:
        hub = self.server_hub
        with hub._lock:
            hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data, headers: dict | None = None) -> None:
        self._send(200, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str, repo_id: str, rel: str = "", revision: str = "",
               headers: dict | None = None) -> None:
        msg = _error_message(code, repo_id, rel, revision)
        h = {"X-Error-Code": code, "X-Error-Message": msg, **(headers or {})}
        self._send(status, json.dumps({"error": msg}).encode(), h)

    def _authorized(self, repo_id: str) -> bool:
        hub = self.server_hub
        if repo_id not in hub.gated:
            return True
        auth = self.headers.get("Authorization") or ""
        return auth.startswith("Bearer ") and auth[len("Bearer "):].strip() in hub.tokens

    # -- routing ---------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._record()
        self._send(405, json.dumps({"error": "method not allowed"}).encode())

    def _route(self) -> None:
        self._record()
        try:
            split = urlsplit(self.path)
            parts = [unquote(p) for p in split.path.split("/")[1:]]
            query = parse_qs(split.query)
            if parts == ["api", "agent-harnesses"]:
                # fetched (at most daily, cached in HF_HOME) to build the User-Agent unless
                # HF_HUB_DISABLE_TELEMETRY=1; an empty registry means "no agent detected"
                self._json({"standardEnvVars": [], "harnesses": {}})
            elif len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
                self._api_models(parts[2:], query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            else:
                self._send(404, json.dumps({"error": "Not Found"}).encode())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _check_repo(self, repo_id: str, revision: str, gate: bool) -> str | None:
        """The commit id for repo@revision, or None after answering with an error."""
        hub = self.server_hub
        if hub.repo_dir(repo_id) is None:
            self._error(404, "RepoNotFound", repo_id)
            return None
        if gate and not self._authorized(repo_id):
            self._error(401, "GatedRepo", repo_id)
            return None
        commit = hub.commit(repo_id)
        if revision not in ("main", commit):
            self._error(404, "RevisionNotFound", repo_id, revision=revision)
            return None
        return commit

    # -- /api/models/... -------------------------------------------------------------
    def _api_models(self, rest: list[str], query: dict) -> None:
        hub = self.server_hub
        repo_id = f"{rest[0]}/{rest[1]}"
        tail = rest[2:]
        if not tail or (len(tail) == 2 and tail[0] == "revision"):
            revision = tail[1] if tail else "main"
            commit = self._check_repo(repo_id, revision, hub.gate_metadata)
            if commit is None:
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._json(self._model_info(repo_id, commit, blobs))
        elif len(tail) >= 2 and tail[0] == "tree":
            revision, path = tail[1], "/".join(tail[2:]).strip("/")
            commit = self._check_repo(repo_id, revision, hub.gate_metadata)
            if commit is None:
                return
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = self._tree(repo_id, path, recursive)
            if entries is None:
                self._error(404, "EntryNotFound", repo_id, path, revision, {"X-Repo-Commit": commit})
            else:
                self._json(entries)
        else:
            self._send(404, json.dumps({"error": "Not Found"}).encode())

    def _model_info(self, repo_id: str, commit: str, blobs: bool) -> dict:
        hub = self.server_hub
        siblings = []
        used = 0
        for rel in hub.repo_files(repo_id):
            sib: dict = {"rfilename": rel}
            meta = hub.file_meta(repo_id, rel)
            used += meta.size
            if blobs:
                sib["blobId"] = meta.blob_id
                sib["size"] = meta.size
                if meta.lfs:
                    sib["lfs"] = {"sha256": meta.sha256, "size": meta.size, "pointerSize": meta.pointer_size}
            siblings.append(sib)
        owner = repo_id.split("/")[0]
        has_gguf = any(s["rfilename"].endswith(".gguf") for s in siblings)
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": owner,
            "sha": commit,
            "lastModified": DATE,
            "createdAt": DATE,
            "private": False,
            "gated": "manual" if repo_id in hub.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if has_gguf else [],
            "library_name": "gguf" if has_gguf else None,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": used,
        }

    def _tree(self, repo_id: str, path: str, recursive: bool) -> list | None:
        hub = self.server_hub
        files = hub.repo_files(repo_id)
        prefix = f"{path}/" if path else ""
        under = [f for f in files if f.startswith(prefix)]
        if path and not under:
            return None
        entries: list[dict] = []
        dirs_seen: set[str] = set()
        for rel in under:
            sub = rel[len(prefix):].split("/")
            # directories between `path` and the file
            for depth in range(1, len(sub)):
                if not recursive and depth > 1:
                    break
                d = prefix + "/".join(sub[:depth])
                if d not in dirs_seen:
                    dirs_seen.add(d)
                    entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                    "size": 0, "path": d})
            if not recursive and len(sub) > 1:
                continue
            meta = hub.file_meta(repo_id, rel)
            entry = {"type": "file", "oid": meta.blob_id, "size": meta.size, "path": rel}
            if meta.lfs:
                entry["lfs"] = {"oid": meta.sha256, "size": meta.size, "pointerSize": meta.pointer_size}
            entries.append(entry)
        return entries

    # -- /{repo}/resolve/{revision}/{filename} --------------------------------------
    def _resolve(self, repo_id: str, revision: str, rel: str) -> None:
        hub = self.server_hub
        commit = self._check_repo(repo_id, revision, gate=True)
        if commit is None:
            return
        meta = hub.file_meta(repo_id, rel)
        if meta is None:
            self._error(404, "EntryNotFound", repo_id, rel, revision, {"X-Repo-Commit": commit})
            return

        size = meta.size
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{meta.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": (f"inline; filename*=UTF-8''{quote(rel.rsplit('/', 1)[-1])}; "
                                    f'filename="{rel.rsplit("/", 1)[-1]}";'),
        }
        if meta.lfs:
            headers["X-Linked-Etag"] = f'"{meta.sha256}"'
            headers["X-Linked-Size"] = str(size)

        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and self.command == "GET":
            parsed = _parse_range(rng, size)
            if parsed is None:
                self.send_response(416)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return

        cut, stall, bad = hub._take_faults(rel)
        stop_at = cut
        if stall is not None and (stop_at is None or stall[0] < stop_at):
            stop_at = stall[0]
        else:
            stall = None
        sent = 0
        with open(meta.path, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                if bad:
                    chunk = chunk.translate(_INVERT)
                if stop_at is not None and sent + len(chunk) >= stop_at:
                    self.wfile.write(chunk[: stop_at - sent])
                    self.wfile.flush()
                    if stall is not None:
                        stall[2].set()
                        hub._released.wait(stall[1])
                    self._drop_connection()
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                remaining -= len(chunk)
        self.wfile.flush()

    def _drop_connection(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive for a single `bytes=` range, or None when unsatisfiable."""
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[len("bytes="):].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return None
            return max(size - n, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
