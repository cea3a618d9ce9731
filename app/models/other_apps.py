"""Models other apps already keep on this machine: Ollama's store, LM Studio's models
folder and llama.cpp's `-hf` cache, found where each app keeps them (paths.py) and read in
place. roost never copies, changes or removes these files: `roost rm` refuses, and says
how to remove one in the app that owns it.

Each model runs by a name that says whose it is and reads as that app names it:
`ollama:llama3.2:3b` (Ollama's own shortest name), `lmstudio:PUBLISHER/REPO` (or
`lmstudio:PUBLISHER/REPO/FILE.gguf` where a folder holds several files), and
`llama.cpp:FILE.gguf` (the file's name in llama.cpp's cache). A manifest that cannot be
read, or names a blob that is gone, is skipped: what is on disk is listed, never a
traceback about another app's files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from roost import paths
from roost.models import catalog

# The prefix a name takes -> the source `roost ls` shows; and each source's name in words.
PREFIXES = {"ollama": "ollama", "lmstudio": "lm-studio", "llama.cpp": "llama.cpp"}
APPS = {"ollama": "Ollama", "lm-studio": "LM Studio", "llama.cpp": "llama.cpp"}

# Ollama's layout (github.com/ollama/ollama: manifest/paths.go, manifest/manifest.go,
# types/model/name.go): manifests/HOST/NAMESPACE/MODEL/TAG, a Docker-style JSON manifest
# whose layers list the blobs by digest; the GGUF is the layer of this media type, stored
# as blobs/sha256-HEX (sha256:HEX from Ollama releases before 2024 on macOS and Linux).
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_HOST, OLLAMA_NAMESPACE, OLLAMA_TAG = "registry.ollama.ai", "library", "latest"
DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class AppModel:
    source: str  # "ollama", "lm-studio" or "llama.cpp"
    name: str  # what `roost run` takes: "ollama:llama3.2:3b"
    path: str  # the GGUF (its first part, for a split file)
    size: int  # bytes, every part
    quant: str
    file: str  # the file's name in the app's store
    remove_hint: str  # how to remove it in the app that owns it
    also: tuple[str, ...] = ()  # other names that mean it (lower case)

    @property
    def app(self) -> str:
        return APPS[self.source]

    def as_dict(self, fits: str) -> dict:
        """As `roost ls --json` lists it, beside the Hugging Face cache's files."""
        return {"name": self.name, "repo": None, "file": self.file, "quant": self.quant, "size": self.size,
                "fits": fits, "path": self.path, "source": self.source}

    def refusal(self) -> str:
        """Why `roost rm` leaves it alone, and what to do instead, in one line."""
        return (f"{self.name} is {self.app}'s ({self.path}); roost does not remove another app's files: "
                f"{self.remove_hint}")


def is_app_name(text: str) -> bool:
    return text.partition(":")[0].lower() in PREFIXES


def found() -> list[AppModel]:
    """Every GGUF in the other apps' stores, in the order `roost ls` lists them."""
    return [*ollama(), *lmstudio(), *llama_cpp()]


def resolve(text: str) -> AppModel:
    """The model an `ollama:`, `lmstudio:` or `llama.cpp:` name means; CatalogError in one
    line when that app has no such model here."""
    prefix, _, rest = text.partition(":")
    source = PREFIXES[prefix.lower()]
    models = {"ollama": ollama, "lm-studio": lmstudio, "llama.cpp": llama_cpp}[source]()
    want = _ollama_key(rest) if source == "ollama" else rest.strip("/").lower()
    hits = [m for m in models if want == (_ollama_key(m.name.partition(":")[2]) if source == "ollama"
                                          else m.name.partition(":")[2].lower()) or want in m.also]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise catalog.CatalogError(f"{text} names {len(hits)} files: {', '.join(m.name for m in hits)}; give one")
    known = ", ".join(m.name for m in models[:8]) + (", …" if len(models) > 8 else "")
    raise catalog.CatalogError(f"{APPS[source]} has no model {rest!r} here"
                               + (f"; it has: {known}" if models else "") + " (see: roost ls)")


def owner_of(path: str) -> AppModel | None:
    """The other app's model a path on disk is (any part of it), if it is one."""
    real = os.path.realpath(path)
    for m in found():
        parts = catalog.GgufFile(m.quant, os.path.basename(m.path), m.size, _parts(m.path)).files
        if real in {os.path.realpath(os.path.join(os.path.dirname(m.path), p)) for p in parts}:
            return m
    return None


def _parts(path: str) -> int:
    m = catalog.SPLIT_PART.search(path)
    return int(m.group(2)) if m else 1


# Ollama


def ollama() -> list[AppModel]:
    """Every name in Ollama's stores whose weights are a GGUF blob there; two names of one
    blob (a `cp`, or one model pulled by two names) are both listed, as `ollama list` does."""
    out, seen = [], set()
    for store in paths.ollama_models():
        if os.path.realpath(store) in seen:
            continue
        seen.add(os.path.realpath(store))
        root = os.path.join(store, "manifests")
        for manifest in _walk_depth(root, 4):  # HOST/NAMESPACE/MODEL/TAG, as Ollama globs them
            model = _ollama_model(store, root, manifest)
            if model:
                out.append(model)
    return out


def _ollama_model(store: str, root: str, manifest: str) -> AppModel | None:
    host, namespace, model, tag = os.path.relpath(manifest, root).split(os.sep)
    try:
        with open(manifest, encoding="utf-8") as f:
            data = json.load(f)
        layers = data["layers"]
        layer = next(x for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_LAYER)
        blob = _blob(store, layer["digest"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None  # unreadable, a model without a GGUF (a cloud model, safetensors), or its blob is gone
    if blob is None:
        return None
    short = _ollama_short(host, namespace, model, tag)
    quant = _ollama_quant(store, data) or catalog.quant_of(tag + ".gguf")
    return AppModel("ollama", f"ollama:{short}", blob, os.path.getsize(blob), quant, os.path.basename(blob),
                    f"remove it with `ollama rm {short}`")


def _blob(store: str, digest) -> str | None:
    m = DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        return None
    for name in (f"sha256-{m.group(1)}", f"sha256:{m.group(1)}"):
        path = os.path.join(store, "blobs", name)
        if os.path.isfile(path):
            return path
    return None


def _ollama_quant(store: str, manifest: dict) -> str | None:
    """The quant Ollama recorded in the model's config blob (`file_type`, which `ollama
    show` prints as its quantization)."""
    try:
        path = _blob(store, manifest["config"]["digest"])
        with open(path, encoding="utf-8") as f:
            kind = json.load(f).get("file_type")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return kind.upper() if isinstance(kind, str) and kind else None


def _ollama_short(host: str, namespace: str, model: str, tag: str) -> str:
    """Ollama's own shortest name (types/model/name.go, DisplayShortest): the default host
    and namespace left out."""
    if host.lower() != OLLAMA_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != OLLAMA_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _ollama_key(name: str) -> tuple[str, str, str, str]:
    """A name as Ollama parses it, the defaults filled in and compared as Ollama compares
    names (case aside): `llama3.2` is `registry.ollama.ai/library/llama3.2:latest`."""
    base, _, tag = name.rpartition(":") if ":" in name.rpartition("/")[2] else (name, "", "")
    parts = base.split("/")
    host, namespace = OLLAMA_HOST, OLLAMA_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[-1]
    return host.lower(), namespace.lower(), model.lower(), (tag or OLLAMA_TAG).lower()


# LM Studio


def lmstudio() -> list[AppModel]:
    """LM Studio's folder holds PUBLISHER/REPO/FILE.gguf, the Hub's layout (its docs:
    "Import Models"); vision projectors (mmproj) and MLX folders beside them are not
    models llama.cpp runs alone."""
    root = paths.lmstudio_models()
    by_folder: dict[str, list[tuple[str, str, int]]] = {}
    for path in _walk_depth(root, 3):
        publisher, repo, filename = os.path.relpath(path, root).split(os.sep)
        folder = f"{publisher}/{repo}"
        by_folder.setdefault(folder, []).extend(_gguf_groups(os.path.dirname(path), [filename]))
    out = []
    for folder, files in sorted(by_folder.items(), key=lambda kv: kv[0].lower()):
        files = sorted(set(files))
        for first, filename, size in files:
            full = f"{folder}/{filename}"
            name = f"lmstudio:{folder}" if len(files) == 1 else f"lmstudio:{full}"
            out.append(AppModel("lm-studio", name, first, size, catalog.quant_of(filename), full,
                                f"remove it in LM Studio (My Models), or delete {os.path.dirname(first)}",
                                also=(full.lower(), folder.lower())))
    return out


# llama.cpp


def llama_cpp() -> list[AppModel]:
    """The files llama.cpp's `-hf` left in its cache folder: OWNER_REPO_FILE.gguf, the
    repo's slashes made underscores, beside .etag and manifest=…json files of its own;
    and, where LLAMA_CACHE holds newer llama.cpp's downloads, the Hugging Face layout
    (models--OWNER--REPO/snapshots/COMMIT/FILE) in the same folder."""
    root = paths.llama_cpp_cache()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for first, filename, size in _gguf_groups(root, names):
        out.append(AppModel("llama.cpp", f"llama.cpp:{filename}", first, size, catalog.quant_of(filename), filename,
                            f"delete {first} if llama.cpp no longer needs it"))
    for entry in names:
        if not entry.startswith("models--") or not os.path.isdir(os.path.join(root, entry, "snapshots")):
            continue
        repo = entry[len("models--"):].replace("--", "/")
        seen = set()
        snapshots = os.path.join(root, entry, "snapshots")
        for commit in sorted(os.listdir(snapshots)):
            for path in _walk_files(os.path.join(snapshots, commit)):
                rel = os.path.relpath(path, os.path.join(snapshots, commit)).replace(os.sep, "/")
                if rel in seen:
                    continue
                for first, filename, size in _gguf_groups(os.path.dirname(path), [os.path.basename(path)]):
                    key = f"{repo}/{os.path.dirname(rel) + '/' if '/' in rel else ''}{filename}"
                    seen.add(rel)
                    out.append(AppModel("llama.cpp", f"llama.cpp:{key}", first, size, catalog.quant_of(filename), key,
                                        f"delete {os.path.join(root, entry)} if llama.cpp no longer needs it"))
    return out


# What the stores share


def _gguf_groups(folder: str, names: list[str]) -> list[tuple[str, str, int]]:
    """(path of the first part, its file name, bytes of every part) for each GGUF among
    names; a split file's later parts are counted in its first's size."""
    out = []
    for name in names:
        if not name.lower().endswith(".gguf") or "mmproj" in name.lower():
            continue
        part = catalog.SPLIT_PART.search(name)
        if part and part.group(1) != "00001":
            continue
        first = os.path.join(folder, name)
        if not os.path.isfile(first):
            continue
        files = catalog.GgufFile("?", name, 0, int(part.group(2)) if part else 1).files
        try:
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        except OSError:
            continue  # a part is missing: not a model that loads
        out.append((first, name, size))
    return out


def _walk_depth(root: str, depth: int) -> list[str]:
    """The files exactly `depth` levels below root (following links, as the apps do)."""
    level = [root]
    for _ in range(depth - 1):
        level = [os.path.join(d, e) for d in level for e in _listdir(d) if os.path.isdir(os.path.join(d, e))]
    return [os.path.join(d, e) for d in level for e in _listdir(d) if os.path.isfile(os.path.join(d, e))]


def _walk_files(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True) for f in files)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(path) if not e.startswith("."))
    except OSError:
        return []
