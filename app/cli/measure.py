"""roost bench (speed) and roost eval (answers, golden outputs, perplexity), with their history."""

from __future__ import annotations

import json
import sys

from roost.cli.models import downloads, prepare
from roost.cli.run import api_key_of, connect_remote
from roost.cli.terminal import first_interrupt_cancels
from roost.errors import UsageError


PPL_CTX = 512  # llama-perplexity's default chunk, so that figures compare with the community's


def cmd_bench(args) -> int:
    import time

    from roost import report
    from roost.measure import bench, results
    from roost.backends import load
    from roost.backends.base import Cancel

    if args.history:
        records = results.past("bench", args.model)
        if args.json:
            print(json.dumps(records, indent=2))
        elif not records:
            print("no benchmarks yet (roost bench MODEL)" + (f" matching {args.model!r}" if args.model else ""))
        else:
            print(report.bench_history(records))
        return 0
    if args.remote:
        engine = connect_remote(args)
        name, load_s, ceiling = f"{engine.model} at {engine.host}", None, None
    else:
        if args.model is None:
            raise UsageError("give a model: roost bench MODEL (or --remote URL, or --history)")
        args.ctx = args.ctx or args.depth + args.pp + args.tg + 64  # room for the runs, and no more memory than they need
        model = prepare(args, measure=True)  # its result is set beside the ceiling
        name = model.name
        loading = time.perf_counter()
        engine = load(model.path, model.plan, engine=model.engine)
        load_s, ceiling = time.perf_counter() - loading, model.option.ceiling_tps
    cancel = Cancel()
    try:
        with first_interrupt_cancels(cancel):
            result = bench.run(engine, args.pp, args.tg, args.repetitions, model=name, load_s=load_s,
                               ceiling_tps=ceiling, depth=args.depth, cancel=cancel,
                               on_step=None if args.json else lambda step: print(f"  {step}…", file=sys.stderr))
    finally:
        engine.close()
    kept = results.remember("bench", result.as_dict())
    print(json.dumps(result.as_dict(), indent=2) if args.json else report.bench(result))
    if not args.json:
        setup = [f"at depth {result.depth}"] if result.depth else []
        if result.kv_type is not None:
            setup.append(f"KV cache {result.kv_type}")
        if result.flash_attn is not None:
            setup.append(f"flash attention {'on' if result.flash_attn else 'off'}")
        if setup:
            print(" · ".join(setup))
        print(f"kept in {kept}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from roost import report
    from roost.measure import results

    if args.out and not args.from_history:
        raise UsageError("--out goes with --from-history")
    if args.from_history:
        from roost.cli.history import eval_from_history

        return eval_from_history(args)
    if args.history:
        records = results.past("eval", " ".join(args.models) or None)
        scored = results.past("perplexity", " ".join(args.models) or None)
        if args.json:
            print(json.dumps({"eval": records, "perplexity": scored}, indent=2))
        elif not records and not scored:
            print("no evaluations yet (roost eval MODEL ...)")
        else:
            print("\n\n".join(t for t in (records and report.eval_history(records),
                                            scored and report.perplexity_history(scored)) if t))
        return 0
    if not args.models:
        raise UsageError("give one or more models: roost eval MODEL [MODEL ...] (or --history)")
    if args.ppl:
        set_only = [flag for flag, given in (("--set", args.set), ("--limit", args.limit), ("--answers", args.answers),
                                             ("--golden", args.golden or args.golden_update), ("--think", args.think),
                                             ("--think-budget", args.think_budget is not None)) if given]
        if set_only:
            raise UsageError(f"{set_only[0]} goes with an eval set, not with --ppl")
        return _eval_perplexity(args)
    if args.chunks:
        raise UsageError("--chunks goes with --ppl")
    return _eval_set(args)


def _eval_models(args, ctx: int | None):
    """Each model named, checked (found, pulled, planned to fit) before any is loaded, then
    loaded in turn, each in a process of its own, and closed before the next (which gives
    all its memory back): yields (the name shown, path, engine, load seconds, crash); path
    is None for a server; engine is None, and crash the EngineCrashed, where the engine
    crashed as it loaded. With several --kv types, each model runs with each, in order."""
    import time

    from roost.backends import connect, load
    from roost.errors import EngineCrashed
    from roost.models import loading
    from roost.report import labels

    kv_types = args.kv or [None]
    prepared = []  # (spec, name shown, Prepared or None for a server)
    for spec, name in zip(args.models, labels(args.models)):
        if spec.startswith(("http://", "https://")):
            if args.kv or args.flash_attn:
                raise UsageError(f"{spec}: --kv and --flash-attn are set on the server, not here")
            prepared.append((spec, name, None))
            continue
        for kv in kv_types:
            prepared.append((spec, f"{name} · KV {kv}" if len(kv_types) > 1 else name,
                             loading.prepare(spec, ctx=ctx, engine=args.engine, gpu_layers=args.gpu_layers,
                                             threads=args.threads, fetch=downloads(yes=args.yes), kv_type=kv,
                                             flash_attn=args.flash_attn)))
    for spec, name, model in prepared:
        path = model and model.path
        started = time.perf_counter()
        try:
            engine = (connect(spec, None, api_key_of(args)) if model is None
                      else load(model.path, model.plan, engine=model.engine, isolated=True))
        except EngineCrashed as crash:
            yield name, path, None, None, crash
            continue
        try:
            yield name, path, engine, time.perf_counter() - started, None
        finally:
            engine.close()


def _crashed(name: str, why: str) -> None:
    print(f"roost: {name}: {why}; left out, going on", file=sys.stderr, flush=True)


def _progress(args, text: str) -> None:
    if not args.json:
        print(f"  {text}", file=sys.stderr, flush=True)


def _eval_set(args) -> int:
    from dataclasses import asdict

    from roost import report
    from roost.measure import eval_set, evaluate, golden, results
    from roost.backends.base import Cancel

    set_name, items = eval_set.load(args.set)  # a bad line is found before any model loads
    items = items[: args.limit]
    runs, checks = [], {}
    cancel = Cancel()
    with first_interrupt_cancels(cancel):
        for name, path, engine, load_s, crash in _eval_models(args, args.ctx):
            if crash is not None:
                run = evaluate.ModelResult(name, "?", "?", set_name, crashed=str(crash))
            else:
                _progress(args, f"{name}: {len(items)} items…")
                run = evaluate.run(engine, items, model=name, set_name=set_name, load_s=load_s, think=args.think,
                                   think_budget=args.think_budget, cancel=cancel)
            runs.append(run)
            if run.crashed:
                _crashed(name, run.crashed)
            elif args.golden or args.golden_update:
                model_id = golden.identity(path) if path else f"{engine.url} {engine.model}"
                checks[id(run)] = _golden(args, model_id, run, items, engine.info())
    finished = [r for r in runs if not r.crashed]  # a crashed model's answers stop short: not compared
    changes = [evaluate.changes(finished[0], r) for r in finished[1:]]
    for run in finished:
        results.remember("eval", run.as_dict(answers=False))
    code = 1 if len(finished) < len(runs) else 0
    if args.json:
        models = [r.as_dict() for r in runs]
        for model, run in zip(models, runs):
            if id(run) in checks:
                model["golden"] = checks[id(run)]
        print(json.dumps({"set": set_name, "items": len(items), "models": models,
                          "changes": [asdict(c) for c in changes]}, indent=2, ensure_ascii=False))
        return code
    if args.answers:
        for run in finished:
            print(report.answers(run, items) + "\n")
    if finished:
        print(report.evaluation(finished, changes, set_name, items))
    for run in runs:
        if run.crashed:
            print(f"{run.model}: left out: {run.crashed}")
    return code


def _golden(args, model_id: str, run, items, info) -> dict:
    """Store the answers as golden, or compare them with those stored; drift is a warning."""
    from roost import report
    from roost.measure import golden

    old = None if args.golden_update else golden.stored(model_id, run)
    if old is None:
        where = golden.record(model_id, run, items, info)
        if not args.json:
            print(f"roost: golden outputs of {run.model} stored in {where}", file=sys.stderr)
        return {"stored": where}
    drift = golden.compare(old, run, items)
    if not args.json:
        if drift.changed or drift.missing or drift.new or drift.reworded:
            print(report.drift(run.model, drift, golden.diff), file=sys.stderr)
        else:
            print(f"roost: {run.model} gives its golden outputs, all {len(run.answers)} of them", file=sys.stderr)
    return drift.as_dict()


def _eval_perplexity(args) -> int:
    from roost import report
    from roost.measure import perplexity, results
    from roost.backends.base import Cancel
    from roost.errors import EngineCrashed

    servers = [m for m in args.models if m.startswith(("http://", "https://"))]
    if servers:
        raise UsageError(f"{servers[0]}: perplexity needs the model's whole distribution at every position, which "
                         "a server does not send; run it on the machine that holds the model")
    try:
        with open(args.ppl, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"no text file at {args.ppl}") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UsageError(f"{args.ppl} is not a UTF-8 text file") from None
    ctx = args.ctx or PPL_CTX
    scores, reference, crashed = [], None, 0
    cancel = Cancel()
    try:
        with first_interrupt_cancels(cancel):
            for name, _, engine, _, crash in _eval_models(args, ctx):
                try:
                    if crash is not None:
                        raise crash
                    score, kept = perplexity.score(
                        engine, text, ctx, model=name, text_name=args.ppl, limit=args.chunks, reference=reference,
                        keep=reference is None and len(args.models) * len(args.kv or [None]) > 1, cancel=cancel,
                        on_chunk=lambda i, n, name=name: _progress(args, f"{name}: chunk {i + 1}/{n}…"))
                except EngineCrashed as e:  # the next model scores (and is the reference, if none is yet)
                    _crashed(name, str(e))
                    crashed += 1
                    continue
                reference = reference or kept
                scores.append(score)
    finally:
        if reference is not None:
            reference.close()
    for score in scores:
        results.remember("perplexity", score.as_dict())
    if scores or args.json:
        print(json.dumps([s.as_dict() for s in scores], indent=2) if args.json else report.perplexity(scores))
    return 1 if crashed else 0
