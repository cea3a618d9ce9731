"""A Hugging Face Hub stand-in on 127.0.0.1: the endpoints huggingface-hub calls to
describe a repo, list its files and download them, with the headers the client relies
on, plus faults on demand.

Layout: ROOT/<owner>/<name>/<files> — every folder two levels down is a model repo.
Files over 1 MB, and every .gguf / .safetensors, are served as LFS files (sha256 ETag).
huggingface-hub reads HF_ENDPOINT when it is imported: point clients at `url` through
the environment of a fresh process (or re-import the client).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_OVER = 1024 * 1024
CHUNK = 256 * 1024


class HubServer:
    def __init__(self, root: str):
        self.root = root
        self.gated: set[str] = set()
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict]] = []
        self._cut: dict[str, int] = {}
        self._corrupt: set[str] = set()
        self._sha: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- faults, each for the next download of that file only ---------------------
    def cut_after(self, filename: str, nbytes: int) -> None:
        self._cut[filename] = nbytes

    def corrupt(self, filename: str) -> None:
        self._corrupt.add(filename)

    # -- life -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the repo side --------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> str | None:
        path = os.path.join(self.root, *repo_id.split("/"))
        return path if repo_id.count("/") == 1 and os.path.isdir(path) else None

    def files(self, repo_id: str) -> list[str]:
        base = self.repo_dir(repo_id)
        out = []
        for folder, _, names in os.walk(base):
            out += [os.path.relpath(os.path.join(folder, n), base) for n in names]
        return sorted(out)

    def sha256(self, path: str) -> str:
        with self._lock:
            if path not in self._sha:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(8 * 1024 * 1024):
                        digest.update(chunk)
                self._sha[path] = digest.hexdigest()
            return self._sha[path]

    @staticmethod
    def commit(repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def entry(self, repo_id: str, rel: str) -> dict:
        path = os.path.join(self.repo_dir(repo_id), rel)
        size = os.path.getsize(path)
        out = {"type": "file", "path": rel, "size": size, "oid": hashlib.sha1(rel.encode()).hexdigest()}
        if self.is_lfs(rel, size):
            out["lfs"] = {"oid": self.sha256(path), "size": size, "pointerSize": 134}
        return out

    @staticmethod
    def is_lfs(rel: str, size: int) -> bool:
        return size > LFS_OVER or rel.endswith((".gguf", ".safetensors"))


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(),
                   {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

    def _allowed(self, repo_id: str) -> bool:
        hub = self.server_hub
        if repo_id not in hub.gated:
            return True
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in hub.tokens

    def _repo_or_error(self, repo_id: str) -> bool:
        if self.server_hub.repo_dir(repo_id) is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return False
        if not self._allowed(repo_id):
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
            return False
        return True

    # -- routes ---------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.server_hub.requests.append((self.command, path, dict(self.headers)))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            return self._model_info(m[1])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/(.*))?", path):
            return self._tree(m[1], m[2] or "")
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            return self._resolve(m[1], m[2])
        self._error(404, "NotFound", f"no route {path}")

    def _model_info(self, repo_id: str) -> None:
        hub = self.server_hub
        if not self._repo_or_error(repo_id):
            return
        siblings = []
        for rel in hub.files(repo_id):
            e = hub.entry(repo_id, rel)
            sib = {"rfilename": rel, "size": e["size"], "blobId": e["oid"]}
            if "lfs" in e:
                sib["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}
            siblings.append(sib)
        self._json({"_id": hub.commit(repo_id)[:24], "id": repo_id, "modelId": repo_id, "sha": hub.commit(repo_id),
                    "private": False, "gated": "auto" if repo_id in hub.gated else False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": ["gguf"], "library_name": "gguf",
                    "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                    "siblings": siblings})

    def _tree(self, repo_id: str, sub: str) -> None:
        hub = self.server_hub
        if not self._repo_or_error(repo_id):
            return
        self._json([hub.entry(repo_id, rel) for rel in hub.files(repo_id) if rel.startswith(sub)])

    def _resolve(self, repo_id: str, rel: str) -> None:
        hub = self.server_hub
        if not self._repo_or_error(repo_id):
            return
        path = os.path.join(hub.repo_dir(repo_id), rel)
        if not os.path.isfile(path):
            return self._error(404, "EntryNotFound", f"{rel} does not exist on \"main\"")
        size = os.path.getsize(path)
        headers = {"X-Repo-Commit": hub.commit(repo_id), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if hub.is_lfs(rel, size):
            etag = hub.sha256(path)
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": size})
        else:
            etag = hashlib.sha1(rel.encode()).hexdigest()
        headers["ETag"] = f'"{etag}"'
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start = int(m[1])
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        name = os.path.basename(rel)
        cut = hub._cut.pop(name, None)
        corrupt = name in hub._corrupt
        hub._corrupt.discard(name)
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                if corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
                if cut is not None and sent + len(chunk) >= cut:
                    self.wfile.write(chunk[: cut - sent])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
