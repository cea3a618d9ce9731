"""The servers running on this machine: each `roost serve` keeps a small file in the data
folder, servers/<pid>.json, saying where it listens and its API key, so that `roost ps`,
`roost stop` and a warm `roost run` find it without being told.

The file is the server's to write once its socket is bound and to remove when it stops.
A server that was killed never removes its own: readers skip a file whose process is gone
(or is another process that took its pid since), and delete it. The key is in the file,
so the file is the user's alone (0600), as ssh keeps its keys. No starlette or uvicorn
here: `roost run` reads these before anything else.
"""

from __future__ import annotations

import json
import os
import time

from roost import __version__, paths
from roost.errors import RemoteError

# A process started after the file's "started" time is not the server that wrote it (the pid
# was taken again); a little slack for clocks read a moment apart.
CREATED_SLACK_S = 2.0
ASK_S = 5.0  # a local server answers its own endpoints at once, or is not ready


def servers_dir() -> str:
    return os.path.join(paths.data_dir(), "servers")


def announce(url: str, api_key: str | None, host: str) -> str:
    """This process's state file, written whole (a reader never sees half of it); its path."""
    os.makedirs(servers_dir(), mode=0o700, exist_ok=True)
    path = os.path.join(servers_dir(), f"{os.getpid()}.json")
    partial = f"{path}.partial"
    body = {"url": _local(url, host), "pid": os.getpid(), "api_key": api_key, "host": host,
            "started": time.time(), "version": __version__}
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(body, f)
    os.replace(partial, path)
    return path


def withdraw(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _local(url: str, host: str) -> str:
    """A server on every address (0.0.0.0, ::) is reached here on loopback."""
    if host in ("0.0.0.0", "::"):
        return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    return url


def running() -> list[dict]:
    """The servers alive on this machine, as their files say, the most recently started
    first; the files of dead ones are deleted on the way."""
    try:
        names = os.listdir(servers_dir())
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(servers_dir(), name)
        try:
            with open(path, encoding="utf-8") as f:
                server = json.load(f)
            pid, started = int(server["pid"]), float(server["started"])
        except FileNotFoundError:  # removed as we looked: its server stopped
            continue
        except (OSError, ValueError, TypeError, KeyError):  # not one we wrote: left alone, and not used
            continue
        if _alive(pid, started):
            found.append(server)
        else:
            withdraw(path)
    return sorted(found, key=lambda s: s["started"], reverse=True)


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False  # gone, or another user's: not this user's server
    return created <= started + CREATED_SLACK_S


def ask(found: dict, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request to a server found here, with its key;
    RemoteError where it does not answer."""
    import httpx2

    headers = {"Authorization": f"Bearer {found['api_key']}"} if found.get("api_key") else {}
    try:
        response = httpx2.request(method, found["url"] + path, json=body, headers=headers, timeout=ASK_S)
    except httpx2.HTTPError as e:
        raise RemoteError(f"{found['url']} does not answer ({type(e).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    return response.status_code, answer if isinstance(answer, dict) else {}


def served(found: dict) -> list[str]:
    """The model ids a server here lists in /v1/models (what it can serve); none where it
    does not answer."""
    try:
        status, answer = ask(found, "GET", "/v1/models")
    except RemoteError:
        return []
    if status != 200:
        return []
    return [m["id"] for m in answer.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
