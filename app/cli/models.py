"""The model commands: pull, ls, rm, search, fit; and the command line's side of getting a
model ready to load (loading.prepare with the options given, asking before a download),
which run, chat, serve, bench and eval share."""

from __future__ import annotations

import json
import sys

from roost.cli.terminal import confirm, pull_with_progress
from roost.errors import UsageError
from roost.models.loading import DEFAULT_CTX


def prepare(args, model: str | None = None):
    """loading.prepare with what run, chat, serve and bench were given: MODEL, --ctx,
    --engine, --gpu-layers, --threads, and -y for what is not downloaded yet."""
    from roost.models import loading

    return loading.prepare(args.model if model is None else model, ctx=args.ctx, engine=args.engine,
                           gpu_layers=args.gpu_layers, threads=args.threads, fetch=downloads(yes=args.yes))


def downloads(*, yes: bool):
    """loading.prepare's fetch for the command line: download with a progress bar, after
    asking at a terminal (unless --yes); with no terminal to ask at, say how to pull it."""
    can_ask = sys.stdin is not None and sys.stdin.isatty()

    def fetch(text: str, what: str, pull) -> str:
        _ask_to_download(text, what, yes, can_ask)
        return pull_with_progress(pull)
    return fetch


def cmd_fit(args) -> int:
    from roost import report
    from roost.machine import fit, hardware
    from roost.models import catalog, gguf_info, library, loading

    machine = hardware.detect()
    if args.gpu and not (machine.gpus or machine.apple):
        why = "; ".join(machine.notes) or "none was found"
        raise UsageError(f"--gpu asked for, but this machine has no usable GPU ({why})")
    refs = [catalog.resolve(m) for m in args.models]
    if all(r.path for r in refs):
        infos = [gguf_info.read(r.path) for r in refs]
        shape = fit.Shape.from_gguf(infos[0])
        for other in infos[1:]:
            if (other.architecture, other.n_layer, other.n_embd) != (infos[0].architecture, shape.n_layer, shape.n_embd):
                raise UsageError(f"{other.path} is a different model from {infos[0].path}: give quants of one model")
        name, limit = infos[0].name, infos[0].n_ctx_train
        quants = [fit.Quant.from_gguf(i, shape) for i in infos]
    elif len(refs) == 1:
        ref = refs[0]
        if ref.model:
            shape, quants, name = ref.model.shape(), ref.model.quants(), ref.model.name
        else:
            files = catalog.list_repo_gguf(ref.repo)
            shape = library.remote_shape(ref.repo, min(files, key=lambda f: f.size).files[0])
            quants, name = [fit.Quant.from_size(shape, f.quant, f.size) for f in files], ref.repo
        limit = shape.n_ctx_train
    else:
        raise UsageError("give one catalog name or Hub repo, or several local .gguf files of one model")
    n_ctx = loading.context(args.ctx, name, limit)
    ranking = fit.rank(shape, quants, n_ctx, machine, use_gpu=not args.cpu)
    # A catalog model may run on MLX instead of these GGUFs: which engine, and why.
    engine = loading.choose_engine(None, refs[0], machine, n_ctx) if refs[0].model and not args.cpu else None
    if args.json:
        print(json.dumps({"model": name, **ranking.as_dict(), "engine": engine.as_dict() if engine else None},
                         indent=2))
    else:
        print(report.ranking(name, shape, ranking) + (f"\n{engine.line}" if engine else ""))
    return 0 if ranking.pick or engine and engine.name == "mlx" else 1


def _ask_to_download(text: str, what: str, yes: bool, can_ask: bool) -> None:
    if yes:
        return
    if not can_ask:
        raise UsageError(f"{text} is not downloaded yet: run `roost pull {text}` first, or add --yes")
    if not confirm(f"{text} is not downloaded yet. Download {what} now?"):
        raise UsageError("not downloaded; nothing was changed")


def cmd_pull(args) -> int:
    from roost import report
    from roost.machine import hardware
    from roost.models import catalog, library, loading, mlx_models

    machine = hardware.detect()
    ref = catalog.resolve(args.model)
    if ref.path:
        raise UsageError(f"{args.model} is a local file: nothing to pull")
    engine = loading.choose_engine(args.engine, ref, machine, args.ctx)
    print(engine.line, file=sys.stderr)
    if engine.name == "mlx":
        if ref.model is not None and not ref.quant:  # the MLX builds ranked, as the GGUFs are below
            ranking = mlx_models.rank(ref.model, machine, args.ctx or DEFAULT_CTX)
            print(report.ranking(f"{ref.model.name} (MLX builds)", ref.model.shape(), ranking), file=sys.stderr)
        can_ask = sys.stdin is not None and sys.stdin.isatty()
        # as for a GGUF below: asked at a terminal, else pulled (pulling is what was asked for)
        print(loading.mlx_folder(ref, machine, args.ctx, downloads(yes=args.yes or not can_ask)))
        return 0
    choice = library.choose(ref, machine, args.ctx or DEFAULT_CTX)
    if choice.ranking is not None:
        print(report.ranking(ref.model.name if ref.model else ref.repo, choice.shape, choice.ranking), file=sys.stderr)
    have = library.cached_path(choice.repo_id, choice.file)
    if have:
        print(have)
        return 0
    if not args.yes and sys.stdin is not None and sys.stdin.isatty():
        if not confirm(f"Download {choice.repo_id}/{choice.file.file} ({report.size(choice.file.size)})?"):
            return 1
    print(pull_with_progress(lambda **kw: library.pull(choice.repo_id, choice.file, **kw)))
    return 0


def cmd_ls(args) -> int:
    from roost import report
    from roost.machine import fit, hardware
    from roost.models import gguf_info, library
    from roost.errors import ModelFileError

    have = library.on_disk()
    machine = hardware.detect()
    rows = [["model", "quant", "size", "fits now", "source", "path"]]
    out = []
    for d in have:
        quant = d.quant
        try:
            info = gguf_info.read(d.path)
            _, ranking = fit.for_gguf(info, min(DEFAULT_CTX, info.n_ctx_train or DEFAULT_CTX), machine)
            fits = report.fits(ranking.options[0], info.n_layer)
            if quant == "?":  # not in the file's name (an Ollama blob has none): the header's
                quant = ranking.options[0].quant.name
        except ModelFileError:
            fits = "damaged"
        out.append({**d.as_dict(fits), "quant": quant})
        rows.append([d.name or d.repo_id, quant, report.size(d.size), fits, d.source, d.path])
    if args.json:
        print(json.dumps(out, indent=2))
    elif not have:
        print("no models downloaded yet (roost pull NAME; roost search TEXT lists the catalog)")
    else:
        print(report.table(rows, right={2}))
    return 0


def cmd_rm(args) -> int:
    from roost import report
    from roost.models import library

    for d in library.remove(args.model):
        print(f"removed {d.repo_id}/{d.filename} ({report.size(d.size)})")
    return 0


def cmd_search(args) -> int:
    from roost import report
    from roost.machine import hardware
    from roost.models import listing

    offers = [o for o in listing.catalog_offers(hardware.detect(), args.ctx or DEFAULT_CTX) if o.matches(args.text)]
    if args.json:
        print(json.dumps([o.as_dict() for o in offers], indent=2))
    elif not offers:
        print(f"nothing in the catalog matches {' '.join(args.text)!r}")
        return 1
    else:
        rows = [["name", "family", "params", "kind", "best here", "fits", "ceiling"]]
        rows += [[o.name, o.family, report.params(o.params), o.kind, o.pick.quant.name if o.pick else "—",
                  report.best_fit(o), report.ceiling(o.pick)] for o in offers]
        print(report.table(rows))
    return 0
