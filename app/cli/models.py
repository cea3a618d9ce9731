"""The model commands: pull, ls, rm, search, fit; and the command line's side of getting a
model ready to load (loading.prepare with the options given, asking before a download),
which run, chat, serve, bench and eval share."""

from __future__ import annotations

import json
import sys

from roost.cli.terminal import confirm, pull_with_progress
from roost.errors import UsageError
from roost.models.loading import DEFAULT_CTX


def prepare(args, model: str | None = None, measure: bool = False):
    """loading.prepare with what run, chat, serve and bench were given: MODEL, --ctx,
    --engine, --gpu-layers, --threads, --kv, --flash-attn, and -y for what is not
    downloaded yet. measure: the command shows the decode ceiling (bench), so the memory
    bandwidth is measured if it never was (hardware.detect)."""
    from roost.machine import hardware
    from roost.models import loading

    machine = hardware.detect(gpus=loading.can_offload(), measure=True) if measure else None
    prepared = loading.prepare(args.model if model is None else model, ctx=args.ctx, engine=args.engine,
                               gpu_layers=args.gpu_layers, threads=args.threads, machine=machine,
                               fetch=downloads(yes=args.yes), kv_type=args.kv, flash_attn=args.flash_attn)
    if args.kv is None and prepared.plan.kv_type != "f16":
        print(f"roost: a {prepared.plan.kv_type} KV cache lets {prepared.plan.n_ctx} tokens of context fit here, "
              "where an f16 one would not (--kv f16 to refuse)", file=sys.stderr)
    return prepared


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

    machine = hardware.detect(measure=True)
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
    ranking = fit.rank(shape, quants, n_ctx, machine, use_gpu=not args.cpu, min_tps=args.min_speed,
                       kv_type=args.kv, flash_attn=args.flash_attn or "auto")
    # A catalog model may run on MLX instead of these GGUFs: which engine, and why.
    engine = loading.choose_engine(None, refs[0], machine, n_ctx) if refs[0].model and not args.cpu else None
    notes = warnings(name, refs[0].model, ranking, machine, n_ctx)
    if args.json:
        print(json.dumps({"model": name, **ranking.as_dict(), "engine": engine.as_dict() if engine else None,
                          "warnings": notes}, indent=2))
    else:
        print(report.ranking(name, shape, ranking) + "".join(f"\nwarning: {n}" for n in notes)
              + (f"\n{engine.line}" if engine else ""))
    return 0 if ranking.pick or engine and engine.name == "mlx" else 1


def warnings(name: str, model, ranking, machine, n_ctx: int) -> list[str]:
    """What a named model's pick warns of: predicted below the floor, or below ~3.5 bits
    a weight (then the catalog's smaller model of its family at 4 bits, if one fits)."""
    from roost import report
    from roost.models import listing

    pick, notes = ranking.pick, []
    if pick is None:
        return notes
    if ranking.too_slow:
        notes.append(report.too_slow(name, ranking))
    if pick.low_bits:
        smaller = None
        if model is not None:
            offers = listing.catalog_offers(machine, n_ctx, min_tps=ranking.min_tps, family=model.family)
            smaller = listing.smaller_at_4_bits(model.family, model.params, offers)
        notes.append(report.low_bits(name, pick, smaller))
    return notes


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

    machine = hardware.detect(measure=True)
    ref = catalog.resolve(args.model)
    if ref.path and ref.source:
        from roost.models.other_apps import APPS

        raise UsageError(f"{args.model} is already on disk, in {APPS[ref.source]}'s store ({ref.path}): nothing to pull; "
                         f"roost run {args.model} reads it there")
    if ref.path:
        raise UsageError(f"{args.model} is a local file: nothing to pull")
    engine = loading.choose_engine(args.engine, ref, machine, args.ctx)
    print(engine.line, file=sys.stderr)
    if engine.name == "mlx":
        if ref.model is not None and not ref.quant:  # the MLX builds ranked, as the GGUFs are below
            ranking = mlx_models.rank(ref.model, machine, args.ctx or DEFAULT_CTX, min_tps=args.min_speed)
            print(report.ranking(f"{ref.model.name} (MLX builds)", ref.model.shape(), ranking), file=sys.stderr)
            _warn(warnings(ref.model.name, ref.model, ranking, machine, ranking.n_ctx))
        can_ask = sys.stdin is not None and sys.stdin.isatty()
        # as for a GGUF below: asked at a terminal, else pulled (pulling is what was asked for)
        print(loading.mlx_folder(ref, machine, args.ctx, downloads(yes=args.yes or not can_ask)))
        return 0
    choice = library.choose(ref, machine, args.ctx or DEFAULT_CTX, args.min_speed)
    if choice.ranking is not None:
        name = ref.model.name if ref.model else ref.repo
        print(report.ranking(name, choice.shape, choice.ranking), file=sys.stderr)
        _warn(warnings(name, ref.model, choice.ranking, machine, choice.ranking.n_ctx))
    have = library.cached_path(choice.repo_id, choice.file)
    if have:
        print(have)
        return 0
    if not args.yes and sys.stdin is not None and sys.stdin.isatty():
        if not confirm(f"Download {choice.repo_id}/{choice.file.file} ({report.size(choice.file.size)})?"):
            return 1
    print(pull_with_progress(lambda **kw: library.pull(choice.repo_id, choice.file, **kw)))
    return 0


def _warn(notes: list[str]) -> None:
    for n in notes:
        print(f"roost: warning: {n}", file=sys.stderr)


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

    every = listing.catalog_offers(hardware.detect(measure=True), args.ctx or DEFAULT_CTX, min_tps=args.min_speed)
    offers = [o for o in every if o.matches(args.text)]
    if args.json:
        print(json.dumps([o.as_dict() for o in offers], indent=2))
    elif not offers:
        print(f"nothing in the catalog matches {' '.join(args.text)!r}")
        return 1
    else:
        rows = [["name", "family", "params", "kind", "best here", "fits", "ceiling", "predicted"]]
        rows += [[o.name, o.family, report.params(o.params), o.kind + (", older" if o.older else ""),
                  o.pick.quant.name if o.pick and not o.too_slow else "—", report.listed_fit(o),
                  report.ceiling(o.pick), report.predicted(o.pick)] for o in offers]
        print(report.table(rows))
        slow = [o for o in offers if o.too_slow]
        notes = [report.passed_over(slow, slow[0].ranking.min_tps)] if slow else []
        notes += [report.low_bits(o.name, o.pick, listing.smaller_at_4_bits(o.family, o.params, every))
                  for o in offers if o.pick and o.pick.low_bits and not o.too_slow]
        print("".join(f"\n{n}" for n in notes), end="\n" if notes else "")
    return 0
