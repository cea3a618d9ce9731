"""The models on this machine: which file a reference means here, pulling it, listing
and removing what is downloaded. Files live in the standard Hugging Face cache, shared
with llama.cpp's -hf, mlx-lm and the hf CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass

from roost.machine import fit
from roost.models import catalog, download
from roost.models.catalog import CatalogError, GgufFile, Ref
from roost.errors import RoostError

HEADER_PROBE = 16 * 1024**2  # first bytes of a remote GGUF: enough for most headers


@dataclass(frozen=True)
class Choice:
    repo_id: str
    file: GgufFile
    ranking: fit.Ranking | None  # None when the user named the file or quant
    shape: fit.Shape | None


def remote_shape(repo_id: str, filename: str) -> fit.Shape:
    """A model's shape from the header of a file still on the Hub, read with HTTP Range
    requests: what an uncatalogued repo needs for the fit planner."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    from roost.models import gguf_info

    size = HEADER_PROBE
    with download.hub_errors(repo_id, filename):
        while True:
            data = _first_bytes(get_session(), hf_hub_url(repo_id, filename), build_hf_headers(), size,
                                hf_raise_for_status)
            try:
                return fit.Shape.from_gguf(gguf_info.parse_bytes(data, f"{repo_id}/{filename}"))
            except gguf_info.HeaderIncomplete:
                if len(data) < size or size >= 256 * 1024**2:
                    raise CatalogError(f"cannot read the GGUF header of {repo_id}/{filename}") from None
                size *= 4


def _first_bytes(session, url: str, headers: dict, n: int, raise_for_status) -> bytes:
    """At most n bytes from the start of url: asked for with Range, and cut off here
    too, in case a server ignores Range and sends the whole file."""
    chunks, got = [], 0
    with session.stream("GET", url, headers={**headers, "Range": f"bytes=0-{n - 1}"}, follow_redirects=True) as r:
        raise_for_status(r)  # the Hub's own errors (gated, not found) keep their meaning
        for chunk in r.iter_bytes():
            chunks.append(chunk)
            got += len(chunk)
            if got >= n:
                break
    return b"".join(chunks)[:n]


def choose(ref: Ref, machine, n_ctx: int, min_tps: float = fit.MIN_TPS) -> Choice:
    """The file to use for a catalog or Hub reference: the one asked for, else the fit
    planner's pick for this machine. A model named on its own is given even when its pick
    is predicted below min_tps (the ranking says so: Ranking.too_slow), as the named model
    is what was asked for."""
    if ref.model is not None:
        model = ref.model
        if ref.quant:
            return Choice(model.gguf_repo, model.file_for(ref.quant), None, model.shape())
        shape = model.shape()
        ranking = fit.rank(shape, model.quants(), min(n_ctx, model.context), machine, min_tps=min_tps)
        return Choice(model.gguf_repo, _picked(ranking, model.gguf, model.name), ranking, shape)

    files = catalog.list_repo_gguf(ref.repo)
    if ref.file:
        for f in files:
            if ref.file in f.files:
                return Choice(ref.repo, f, None, None)
        raise CatalogError(f"{ref.repo} has no file {ref.file}; it has: {', '.join(f.file for f in files)}")
    if ref.quant:
        for f in files:
            if f.quant.lower() == ref.quant.lower():
                return Choice(ref.repo, f, None, None)
        raise CatalogError(f"{ref.repo} has no {ref.quant} file; it has: {', '.join(f.quant for f in files)}")
    if len(files) == 1:
        return Choice(ref.repo, files[0], None, None)
    shape = remote_shape(ref.repo, min(files, key=lambda f: f.size).files[0])
    quants = [fit.Quant.from_size(shape, f.quant, f.size) for f in files]
    ranking = fit.rank(shape, quants, min(n_ctx, shape.n_ctx_train or n_ctx), machine, min_tps=min_tps)
    return Choice(ref.repo, _picked(ranking, files, ref.repo), ranking, shape)


def _picked(ranking: fit.Ranking, files, name: str) -> GgufFile:
    if ranking.pick is None:
        raise RoostError(f"no quant of {name} fits on this machine: {ranking.reason}")
    return next(f for f in files if f.quant == ranking.pick.quant.name)


def cached_path(repo_id: str, file: GgufFile) -> str | None:
    """The local path of a downloaded file (all its parts), or None."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo_id, f) for f in file.files]
    if all(isinstance(p, str) and os.path.exists(p) for p in paths):
        return paths[0]
    return None


def pull(repo_id: str, file: GgufFile, on_progress=None, cancel=None) -> str:
    """Download every part of a file; the path of the first (llama.cpp finds the rest)."""
    download.check_disk(file.size)
    paths = [download.download(repo_id, f, on_progress=on_progress, cancel=cancel) for f in file.files]
    return paths[0]


@dataclass(frozen=True)
class Downloaded:
    repo_id: str
    filename: str
    path: str
    size: int
    quant: str
    name: str | None  # the catalog name, if the repo is in the catalog
    source = "huggingface"  # where it came from, beside other apps' models (other_apps.AppModel.source)

    def as_dict(self, fits: str) -> dict:
        """As `roost ls --json` lists it, with how it fits here now (report.fits)."""
        return {"name": self.name or self.repo_id, "repo": self.repo_id, "file": self.filename, "quant": self.quant,
                "size": self.size, "fits": fits, "path": self.path, "source": self.source}


def downloaded() -> list[Downloaded]:
    """Every GGUF in the HF cache (split parts shown as their first part)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(download.cache_dir())
    except CacheNotFound:
        return []
    names = {m.gguf_repo.lower(): m.name for m in catalog.models().values() if m.gguf_repo}
    found: dict[tuple[str, str], Downloaded] = {}
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for f in revision.files:
                if not f.file_name.endswith(".gguf"):
                    continue
                rel = str(f.file_path.relative_to(revision.snapshot_path))
                first = catalog.SPLIT_PART.sub("-00001-of-\\2.gguf", rel) if catalog.SPLIT_PART.search(rel) else rel
                key = (repo.repo_id, first)
                prev = found.get(key)
                found[key] = Downloaded(
                    repo.repo_id, first, str(revision.snapshot_path / first), (prev.size if prev else 0) + f.size_on_disk,
                    catalog.quant_of(first), names.get(repo.repo_id.lower()),
                )
    return sorted(found.values(), key=lambda d: (d.repo_id.lower(), d.filename))


def on_disk() -> list:
    """What `roost ls` lists: the Hugging Face cache's GGUFs, then other apps' models
    (other_apps.found), each file once: one another app links to the cache is the cache's."""
    from roost.models import other_apps

    have = downloaded()
    cached = {os.path.realpath(d.path) for d in have}
    return have + [m for m in other_apps.found() if os.path.realpath(m.path) not in cached]


def remove(ref_text: str) -> list[Downloaded]:
    """Remove downloaded files matching a reference: a catalog name (every quant, or
    name:QUANT), a repo, repo:file, or a path in the cache. Returns what was removed."""
    matches = find_downloaded(ref_text)
    if not matches:
        raise CatalogError(f"{ref_text} is not downloaded (see: roost ls)")
    for d in matches:
        for part in GgufFile(d.quant, d.filename, d.size, _parts(d.filename)).files:
            download.remove_cached(os.path.join(os.path.dirname(d.path), os.path.basename(part)))
    return matches


def _parts(filename: str) -> int:
    m = catalog.SPLIT_PART.search(filename)
    return int(m.group(2)) if m else 1


def find_downloaded(ref_text: str) -> list[Downloaded]:
    """Downloaded files a reference names, without asking the network. Another app's
    model is refused here, in one line saying how to remove it in that app: roost only
    reads other apps' stores."""
    from roost.models import other_apps

    have = downloaded()
    path = os.path.realpath(os.path.expanduser(ref_text))
    by_path = [d for d in have if os.path.realpath(d.path) == path or d.path == ref_text]
    if by_path:
        return by_path
    ref = catalog.resolve(ref_text)
    owner = other_apps.resolve(ref_text) if ref.source else other_apps.owner_of(ref.path) if ref.path else None
    if owner is not None:
        raise CatalogError(owner.refusal())
    if ref.path is not None:
        raise CatalogError(f"{ref_text} is not a downloaded model in the Hugging Face cache; roost removes only what it pulled")
    repo = (ref.repo_id or "").lower()
    hits = [d for d in have if d.repo_id.lower() == repo]
    if ref.file:
        hits = [d for d in hits if d.filename == ref.file]
    elif ref.quant:
        hits = [d for d in hits if d.quant.lower() == ref.quant.lower()]
    return hits
