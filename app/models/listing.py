"""What can run here: the catalog's models and the files already on disk, each with the
fit planner's verdict for this machine. `roost search` prints it; the chat app's model
list shows it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from roost.machine import fit
from roost.models import catalog
from roost.models.catalog import GgufFile


@dataclass(frozen=True)
class Offer:
    name: str  # what `roost run` takes: a catalog name, repo:file, or a path
    family: str
    params: float
    kind: str
    description: str
    repo_id: str | None  # where the files come from; None for a file only on disk
    files: tuple[GgufFile, ...]
    ranking: fit.Ranking | None  # None when the file on disk cannot be read
    n_layer: int = 0
    local: dict[str, str] = field(default_factory=dict)  # quant → path of a file already here
    engine: str = "llama"  # "mlx": each of `files` is an MLX build, its `file` the build's repo
    older: bool = False  # the catalog marks it superseded: listed after the current ones

    @property
    def pick(self) -> fit.Option | None:
        return self.ranking.pick if self.ranking else None

    def as_dict(self) -> dict:
        """As `roost search --json` lists it."""
        from roost import report

        return {"name": self.name, "family": self.family, "params": self.params, "kind": self.kind,
                "pick": self.pick.quant.name if self.pick else None, "fits": report.best_fit(self),
                "ceiling_tps": self.pick.ceiling_tps if self.pick else None,
                "predicted_tps": round(self.pick.predicted_tps, 1) if self.pick and self.pick.predicted_tps else None,
                "too_slow": self.too_slow, "low_bits": bool(self.pick and self.pick.low_bits), "older": self.older}

    @property
    def too_slow(self) -> bool:
        """Its pick fits but is predicted below the floor: a listing passes it over."""
        return bool(self.ranking and self.ranking.too_slow)

    def matches(self, words: list[str]) -> bool:
        text = " ".join((self.name, self.family, self.description, self.kind)).lower()
        return all(w.lower() in text for w in words)

    def file_for(self, quant: str) -> GgufFile:
        return next(f for f in self.files if f.quant == quant)


def catalog_offers(machine, n_ctx: int, have=(), min_tps: float = fit.MIN_TPS,
                   family: str | None = None) -> list[Offer]:
    """Every downloadable catalog model (of one family, if given), ranked for this machine
    with min_tps its floor; `have` (library.downloaded()) marks the quants already on disk."""
    on_disk = {(d.repo_id.lower(), d.filename): d.path for d in have}
    offers = []
    for m in catalog.models().values():
        if m.bundled or family is not None and m.family.lower() != family.lower():
            continue
        local = {g.quant: on_disk[key] for g in m.gguf if (key := (m.gguf_repo.lower(), g.file)) in on_disk}
        ranking = fit.rank(m.shape(), m.quants(), min(n_ctx, m.context), machine, min_tps=min_tps)
        offers.append(Offer(m.name, m.family, m.params, m.kind, m.description, m.gguf_repo, m.gguf, ranking,
                            m.arch["n_layer"], local, older=m.older))
    return _current_first(offers)


def mlx_offers(machine, n_ctx: int, min_tps: float = fit.MIN_TPS) -> list[Offer]:
    """The catalog's models that have MLX builds, each build sized from the parameter
    count; `local` marks the builds already downloaded."""
    from roost.models import mlx_models

    offers = []
    for m in catalog.models().values():
        if m.bundled or not m.mlx:
            continue
        builds = mlx_models.builds(m)
        files = tuple(GgufFile(q.name, repo, q.file_bytes) for repo, q in builds)
        local = {q.name: folder for repo, q in builds if (folder := mlx_models.cached_dir(repo))}
        ranking = fit.rank(m.shape(), [q for _, q in builds], min(n_ctx, m.context), machine, min_tps=min_tps)
        offers.append(Offer(m.name, m.family, m.params, m.kind, m.description, None, files, ranking,
                            m.arch["n_layer"], local, engine="mlx", older=m.older))
    return _current_first(offers)


def _current_first(offers: list[Offer]) -> list[Offer]:
    """The catalog's order, with the entries it marks older after all the current ones."""
    return sorted(offers, key=lambda o: o.older)


def smaller_at_4_bits(family: str, params: float, offers: list[Offer]) -> tuple[Offer, fit.Option] | None:
    """For a pick below ~3.5 bits a weight: the largest model of the family smaller than
    `params` among `offers` with a quant at 4 bits or more that fits whole here and reaches
    the floor, and that quant; None if the catalog has none."""
    found = []
    for o in offers:
        if o.ranking is None or o.family.lower() != family.lower() or not 0 < o.params < params:
            continue
        r = o.ranking
        good = [q for q in r.options if q.fit == "full" and not q.low_bits
                and (q.predicted_tps is None or q.predicted_tps >= r.min_tps)]
        if good:
            # the one the planner would take, else the best quality of them
            found.append((o, o.pick if o.pick in good else
                          max(good, key=lambda q: (min(q.bits_per_weight, fit.QUALITY_CAP_BPW), -q.quant.file_bytes))))
    return max(found, key=lambda f: f[0].params, default=None)


def local_offers(machine, n_ctx: int, have=()) -> list[Offer]:
    """The bundled demo, the downloaded files no catalog entry offers, and other apps'
    models (other_apps.found: read where those apps keep them), planned from their own
    headers."""
    from roost.models import other_apps

    known = {(m.gguf_repo.lower(), g.file) for m in catalog.models().values() if m.gguf_repo for g in m.gguf}
    offers = []
    try:
        offers.append(_file_offer("demo", catalog.demo_model_path(), None, machine, n_ctx, "the bundled demo model"))
    except catalog.CatalogError:
        pass  # its package is not installed: nothing to offer
    for d in have:
        if (d.repo_id.lower(), d.filename) not in known:
            offers.append(_file_offer(f"{d.repo_id}:{d.filename}", d.path, d.repo_id, machine, n_ctx, "downloaded"))
    cached = {os.path.realpath(d.path) for d in have}
    for m in other_apps.found():
        if os.path.realpath(m.path) not in cached:
            offers.append(_file_offer(m.name, m.path, None, machine, n_ctx, f"from {m.app}, read in place"))
    return offers


def _file_offer(name: str, path: str, repo_id: str | None, machine, n_ctx: int, description: str) -> Offer:
    from roost.models import gguf_info
    from roost.errors import ModelFileError

    quant = catalog.quant_of(path)
    try:
        info = gguf_info.read(path)
    except ModelFileError as e:
        return Offer(name, "?", 0, "?", f"cannot be read: {e}", repo_id, (), None, local={quant: path})
    shape, ranking = fit.for_gguf(info, min(n_ctx, info.n_ctx_train or n_ctx), machine)
    # Quant names come from the file: the planner's one option is this file.
    files = (GgufFile(ranking.options[0].quant.name, path, ranking.options[0].quant.file_bytes),)
    return Offer(name, info.name, shape.n_params, "chat", description, repo_id, files, ranking, shape.n_layer,
                 {files[0].quant: path})
