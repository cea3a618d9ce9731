"""Golden outputs: a model's greedy answers to an eval set, stored per model file and
engine, so that a later run can tell when the same model on the same engine starts to
answer differently (an engine upgrade, a new build, another device). Drift is reported
as a warning with a diff; the answers may still be right."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass

from roost.measure.evaluate import ModelResult


@dataclass(frozen=True)
class Drift:
    recorded: dict  # the stored record's engine, version, device and date
    changed: list[tuple[str, str, str]]  # (item id, stored answer, answer now)
    missing: list[str]  # items stored but not run now
    new: list[str]  # items run now but never stored
    reworded: list[str]  # items whose prompt changed since: not compared

    def as_dict(self) -> dict:
        return {"changed": [{"id": i, "golden": old, "now": new} for i, old, new in self.changed],
                "missing": self.missing, "new": self.new, "reworded": self.reworded, "recorded": self.recorded}


def identity(path: str) -> str:
    """A model as the same bytes under any folder: its name and size (a folder's files)."""
    if os.path.isdir(path):
        size = sum(os.path.getsize(os.path.join(path, n)) for n in sorted(os.listdir(path))
                   if os.path.isfile(os.path.join(path, n)))
    else:
        size = os.path.getsize(path)
    return f"{os.path.basename(os.path.normpath(path))} ({size} bytes)"


def key(model_id: str, engine: str, set_name: str) -> str:
    digest = hashlib.sha256(f"{model_id}\n{engine}\n{set_name}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.split(" (")[0])[:60]
    return f"{slug}-{engine}-{digest}"


def folder() -> str:
    from roost.paths import golden_dir

    return golden_dir()


def file_for(model_id: str, result: ModelResult) -> str:
    return os.path.join(folder(), key(model_id, result.engine, result.set) + ".json")


def record(model_id: str, result: ModelResult, items, info) -> str:
    """Store these answers as the golden ones; returns the file."""
    from roost.measure.results import write_json

    path = file_for(model_id, result)
    data = {"model": model_id, "engine": result.engine, "version": info.version, "device": result.device,
            "build": info.build, "set": result.set, "when": time.time(),
            "thinking": result.thinking and asdict(result.thinking),  # the answers alone are stored
            "outputs": {a.id: a.output for a in result.answers},
            "prompts": {i.id: _prompt(i) for i in items}}
    write_json(path, data)
    return path


def stored(model_id: str, result: ModelResult) -> dict | None:
    """The golden record for this model, engine and set; None when there is none. A
    record that cannot be read is a RoostError naming the file."""
    from roost.errors import RoostError

    path = file_for(model_id, result)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise RoostError(f"the golden outputs in {path} cannot be read ({e}); "
                         "store them again with --golden-update") from None
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), dict):
        raise RoostError(f"the golden outputs in {path} are not roost's; store them again with --golden-update")
    return data


def _prompt(item) -> str:
    return json.dumps([item.system, item.question, item.max_tokens])


def compare(golden: dict, result: ModelResult, items) -> Drift:
    outputs, prompts = golden["outputs"], golden.get("prompts", {})
    now = {a.id: a.output for a in result.answers}
    reworded = [i.id for i in items if i.id in outputs and prompts.get(i.id, _prompt(i)) != _prompt(i)]
    changed = [(i, outputs[i], text) for i, text in now.items()
               if i in outputs and i not in reworded and outputs[i] != text]
    return Drift({k: golden.get(k) for k in ("engine", "version", "device", "when", "thinking")}, changed,
                 [i for i in outputs if i not in now], [i for i in now if i not in outputs], reworded)


def diff(stored_text: str, now: str) -> list[str]:
    """A unified diff of two answers, line by line, without its headers."""
    lines = list(difflib.unified_diff(stored_text.splitlines(), now.splitlines(), lineterm="", n=2))[2:]
    return [line for line in lines if not line.startswith("@@ ")]
