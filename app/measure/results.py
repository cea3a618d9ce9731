"""What roost measured on this machine, kept: one JSON line per result in the data
directory, for `roost bench` and `roost eval` alike, so that `--history` shows how a
model, quant and engine did here over time. Each record names its `kind`."""

from __future__ import annotations

import json
import os


def path() -> str:
    from roost.paths import results_file

    return results_file()


def write_json(path: str, data) -> None:
    """Replace a JSON file whole: a crash mid-write leaves the old one, never half of each."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)


def remember(kind: str, record: dict) -> str:
    """Append one result; returns the file it is kept in."""
    where = path()
    os.makedirs(os.path.dirname(where), exist_ok=True)
    with open(where, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, **record}, ensure_ascii=False) + "\n")
    return where


def past(kind: str, model_text: str | None = None) -> list[dict]:
    """Earlier results of one kind, oldest first, whose model names contain model_text;
    lines a crash tore are skipped."""
    try:
        with open(path(), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("kind") == kind
                and (model_text is None or model_text in str(record.get("model", "")))):
            records.append(record)
    return records
