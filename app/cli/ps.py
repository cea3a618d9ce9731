"""roost ps (what the roost servers on this machine have loaded) and roost stop MODEL
(unload one now), over the servers' own /api/ps and /api/stop.

The servers are found by their state files (serve/state.py), which hold their URL and
key: no --remote or --api-key to give. Both commands speak plain HTTP here: neither
imports the server's own modules.
"""

from __future__ import annotations

import json

from roost.errors import RemoteError, RoostError

NO_SERVER = "no roost server is running here"


def cmd_ps(args) -> int:
    """Exit 0 with nothing running, as `ollama ps` with nothing loaded: "nothing" is an
    answer to "what is running?", and a script that lists models in a loop should not
    stop there. (`ollama ps` fails when its server is down, but Ollama's server is
    meant to be always up; roost's runs only when started.)"""
    from roost.serve import state

    servers = [_listing(found) for found in state.running()]
    if args.json:
        print(json.dumps({"servers": servers}, indent=2))
        return 0
    if not servers:
        print(NO_SERVER)
        return 0
    print("\n\n".join(_shown(server) for server in servers))
    return 0


def _listing(found: dict) -> dict:
    """A server and its models (/api/ps), or why they are not known."""
    from roost.serve import state

    listing = {"url": found["url"], "pid": found["pid"], "version": found.get("version")}
    try:
        status, answer = state.ask(found, "GET", "/api/ps")
    except RemoteError:
        return {**listing, "models": None, "error": "not answering yet: still loading its first model?"}
    if status != 200 or not isinstance(answer.get("models"), list):
        return {**listing, "models": None, "error": f"/api/ps answered {status}: {_said(answer)}"}
    return {**listing, "models": answer["models"]}


def _shown(server: dict) -> str:
    from roost import report

    title = f"roost serve at {server['url']} (pid {server['pid']})"
    if server["models"] is None:
        return f"{title}: {server['error']}"
    if not server["models"]:
        return f"{title}: no model loaded"
    rows = [["MODEL", "ENGINE", "DEVICE", "MEMORY (IN USE / PLANNED)", "IDLE", "EXPIRES", "STATE"]]
    for m in server["models"]:
        reading = m.get("memory") or {}
        # The GPU's memory where the model is there, else the engine process's RSS.
        in_use = reading.get("device_used_bytes") or reading.get("rss_bytes")
        rows.append([m["model"], m.get("engine") or "—", m.get("device") or "—",
                     f"{report.size(in_use)} / {report.size(m.get('planned_bytes'))}",
                     "answering" if m.get("busy") else _duration(m.get("idle_s")),
                     "never" if m.get("expires_in_s") is None else f"in {_duration(m['expires_in_s'])}",
                     m.get("state") or "—"])
    return f"{title}\n{report.table(rows)}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_stop(args) -> int:
    """Unload MODEL from the server here that has it loaded; one line and exit 1 where
    none has."""
    from roost.serve import state

    servers = state.running()
    if not servers:
        raise RemoteError(NO_SERVER)
    loaded = []
    for found in servers:
        try:
            status, answer = state.ask(found, "POST", "/api/stop", {"model": args.model})
        except RemoteError:
            continue  # still loading: it has nothing to stop
        if status == 200:
            print(f"roost: unloaded {answer.get('stopped', args.model)} from the server at {found['url']}")
            return 0
        if status != 404:
            raise RemoteError(f"the server at {found['url']} refused: {_said(answer)}")
        loaded += _loaded(found)
    raise RoostError(f"{args.model} is not loaded (loaded: {', '.join(loaded) or 'none'}; see roost ps)")


def _loaded(found: dict) -> list[str]:
    from roost.serve import state

    try:
        status, answer = state.ask(found, "GET", "/api/ps")
    except RemoteError:
        return []
    return [m["model"] for m in answer.get("models") or [] if isinstance(m, dict) and "model" in m]


def _said(answer: dict) -> str:
    error = answer.get("error")
    return str(error.get("message") if isinstance(error, dict) else error or answer)
