"""The text the commands print for people (their --json output is the data itself)."""

from __future__ import annotations

from roost.machine.hardware import GiB, Machine

MiB = 1024**2


def size(n: int | float | None) -> str:
    if n is None:
        return "—"
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def stats_line(stats) -> str:
    # A server that gives no counts leaves the prompt's size unknown (0), not empty.
    prompt = (f"prompt {stats.prompt_tokens} tok ({stats.cached_tokens} cached) at {stats.prefill_tps:.1f} tok/s"
              if stats.prompt_tokens else "prompt size n/a")
    generated = f"generated {stats.generated_tokens} tok at {stats.decode_tps:.1f} tok/s"
    ttft = f"TTFT {stats.ttft_s:.3f} s"
    if stats.reasoning_tokens:  # a reasoning model: its thought and its answer at their own rates
        generated = f"thought {stats.reasoning_tokens} tok in {stats.reasoning_s:.1f} s ({stats.reasoning_tps:.1f} tok/s)"
        if stats.answer_ttft_s is None:
            generated += " · no answer"
        else:
            generated += f" · answer {stats.answer_tokens} tok at {stats.answer_tps:.1f} tok/s"
            ttft += f" (answer {stats.answer_ttft_s:.3f} s)"
    line = (
        f"{prompt} · {generated}"
        f" · {ttft} · peak memory {size(stats.peak_rss_bytes) if stats.peak_rss_bytes else 'n/a'}"
        f" · context {stats.context_tokens}/{stats.n_ctx or '?'}"
    )
    if stats.stop_reason != "stop":
        line += f" · stopped: {stats.stop_reason}"
    return line


def reading(progress) -> str:
    """A long prompt being read (a Progress), as the chat's status bar and run --stats show it."""
    rate = f" · {progress.tps:,.0f} tok/s" if progress.tps else ""
    return f"reading {progress.done:,} / {progress.total:,} tokens{rate}"


def table(rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def fits(option, n_layer: int) -> str:
    if option.fit == "partial":
        return f"partial {option.n_gpu_layers}/{n_layer} layers"
    return {"full": "full", "cpu": "CPU only", "no": "no"}[option.fit]


def params(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def ceiling(option) -> str:
    return f"≤ {option.ceiling_tps:.0f} tok/s" if option and option.ceiling_tps else "—"


def predicted(option) -> str:
    """The rate decoding is predicted to reach (fit.DECODE_SHARE of the ceiling)."""
    from roost.machine.fit import tps

    return f"~{tps(option.predicted_tps)} tok/s" if option and option.predicted_tps else "—"


def listed_fit(offer) -> str:
    """The fits cell of a listing: a pick predicted below the floor is passed over."""
    return "too slow" if offer.too_slow else best_fit(offer)


def too_slow(name: str, ranking) -> str:
    """What a listing passed over, or a named model's warning, in one line."""
    from roost.machine.fit import tps

    p = ranking.pick
    return (f"{name} {p.quant.name}: fits, ~{tps(p.predicted_tps)} tok/s predicted: too slow here "
            f"(floor {ranking.min_tps:g}; --min-speed sets it)")


def passed_over(slow: list, min_tps: float) -> str:
    """A listing's one line for the offers it passed over as too slow (the table shows each)."""
    names = "1 model fits" if len(slow) == 1 else f"{len(slow)} models fit"
    return (f"too slow: {names} here but decode{'s' if len(slow) == 1 else ''} under {min_tps:g} tok/s predicted; "
            f"roost fit NAME gives the numbers, --min-speed sets the floor")


def low_bits(name: str, option, smaller=None) -> str:
    """A pick below ~3.5 bits a weight, and the smaller model at 4 bits or more, if any."""
    from roost.machine.fit import tps

    # A file's average counts the tensors kept wider (a Q3_K_M file is ~3.9 bits a weight):
    # the type, not that figure, says where most weights are.
    line = f"{name} {option.quant.name} quantizes most weights below ~3.5 bits, where quality falls off"
    if smaller:
        offer, q = smaller
        speed = f", ~{tps(q.predicted_tps)} tok/s predicted" if q.predicted_tps else ""
        line += f"; {offer.name} at {q.quant.name} fits here too{speed} (roost pull {offer.name})"
    return line


def best_fit(offer) -> str:
    """How the planner's pick for a listing.Offer runs here."""
    return fits(offer.pick, offer.n_layer) if offer.pick else "no"


def quant_row(o, n_layer: int, picked: bool = False) -> list[str]:
    return [
        o.quant.name + (" *" if picked else ""),
        size(o.quant.file_bytes),
        f"{o.bits_per_weight:.2f}",
        fits(o, n_layer),
        size(o.estimate.total),
        size(o.estimate.gpu) if o.estimate.gpu else "—",
        f"≤ {o.ceiling_tps:.0f}" if o.ceiling_tps else "—",
        predicted(o).removesuffix(" tok/s"),
    ]


QUANT_HEADER = ["quant", "size", "bits/w", "fits", "memory", "on GPU", "ceiling tok/s", "predicted"]


def ranking(name: str, shape, r) -> str:
    b = r.budget
    head = (
        f"{name}: {shape.n_params / 1e9:.2f}B parameters, {shape.n_layer} layers"
        + (f", MoE {shape.n_expert_used}/{shape.n_expert} experts active" if shape.n_expert else "")
        + f"\nplanned for {b.device} ({b.device_name}) at {r.n_ctx} tokens of context; {b.margin_note}"
    )
    header = [*QUANT_HEADER[:4], f"memory @ {r.n_ctx}", *QUANT_HEADER[5:]]
    rows = [header] + [quant_row(o, shape.n_layer, o is r.pick) for o in r.options]
    lines = [head, "", table(rows, right={1, 2, 4, 5, 6, 7}), ""]
    lines.append(f"pick: {r.pick.quant.name} — {r.reason}." if r.pick else f"pick: none — {r.reason}.")
    if any(o.ceiling_tps is None for o in r.options) and b.unified:
        # Unified memory is read at the chip's rate, which a CPU measurement does not give.
        lines.append(f"ceiling: the {b.device_name}'s memory bandwidth is not in roost's table yet; "
                     "roost bench measures the real speed.")
    elif any(o.ceiling_tps is None for o in r.options):
        lines.append("ceiling: memory bandwidth unknown here; run `roost doctor --measure` once to measure it.")
    else:
        from roost.machine.fit import DECODE_SHARE

        share = DECODE_SHARE[b.device]
        lines.append(f"ceiling: bandwidth ÷ bytes read per token, at an empty context; predicted: the ceiling × "
                     f"{share:.2f}, the share llama.cpp's decoding reaches on {'a CPU' if b.device == 'CPU' else b.device} "
                     "(roost bench measures it here), less for small models on big GPUs.")
    return "\n".join(lines)


def machine(m: Machine) -> list[str]:
    lines = [
        f"system      {m.os} {m.arch}",
        f"CPU         {m.cpu_model}, {m.physical_cores} core{'s' if m.physical_cores != 1 else ''} ({m.logical_cores} threads)"
        + (f", {' '.join(m.cpu_features)}" if m.cpu_features else ""),
        f"memory      {size(m.ram_total_bytes)} total, {size(m.ram_available_bytes)} available",
    ]
    if m.apple:
        a = m.apple
        lines.append(f"Apple       {a.chip}, {size(a.unified_bytes)} unified; Metal may use "
                     f"{size(a.working_set_bytes)} ({a.working_set_source}); "
                     f"bandwidth {_gbs(a.bandwidth_gbs)}"
                     + (f"; {a.performance_cores} performance cores" if a.performance_cores else ""))
    for g in m.gpus:
        extra = ", ".join(x for x in (
            f"CUDA {g.cuda}" if g.cuda else "", f"driver {g.driver}" if g.driver else "",
            f"compute {g.compute_capability}" if g.compute_capability else "",
            f"{g.utilization_pct}% busy" if g.utilization_pct is not None else "",
            f"{g.power_w:.0f} W" if g.power_w is not None else "",
            f"{g.temperature_c} °C" if g.temperature_c is not None else "") if x)
        lines.append(f"GPU {g.index}       {g.name}: {size(g.free_bytes)} free of {size(g.total_bytes)}, "
                     f"bandwidth {_gbs(g.bandwidth_gbs)}" + (f"; {extra}" if extra else ""))
    if m.apple is None:  # on a Mac the CPU reads the same unified memory, at the rate above
        lines.append(f"CPU memory  bandwidth {_gbs(m.cpu_bandwidth_gbs)}"
                     + (" (measured)" if m.cpu_bandwidth_gbs else " (roost doctor --measure)"))
    lines += [f"note        {n}" for n in m.notes]
    return lines


def _gbs(value: float | None) -> str:
    return f"{value:g} GB/s" if value else "unknown"


def doctor(data: dict, m: Machine) -> str:
    lines = machine(m)
    for e in data["engines"]:
        lines.append(f"engine      {e['name']}: {'yes' if e['available'] else 'no'} — {e['detail']}")
    build = data["build"]
    args = f"; CMAKE_ARGS={build['cmake_args']}" if build["cmake_args"] else ""
    lines.append(f"build       llama.cpp for {build['wanted']} suits this machine: {build['why']}{args}")
    if data.get("self_test"):
        test = data["self_test"]
        lines.append(f"self-test   {test['detail']}" + (f"; fix: {test['fix']}" if test["fix"] else ""))
    lines += [f"advice      {a}" for a in data["advice"]] or ["advice      none: this machine is set up well"]
    return "\n".join(lines)


def _rate(r: dict | object) -> str:
    mean, sd = (r["mean"], r["sd"]) if isinstance(r, dict) else (r.mean, r.sd)
    return f"{mean:,.1f} ± {sd:,.1f}"


def bench(result) -> str:
    """A result as llama-bench lays one out: a row per test, then what is not a rate."""
    layers = "all" if result.n_gpu_layers < 0 else result.n_gpu_layers
    where = f"{result.device}" + (f", {layers} layers on GPU" if result.n_gpu_layers else "")
    rows = [["model", "engine", "device", "test", "t/s"],
            [result.model, result.engine, where, f"pp{round(result.pp.tokens)}", _rate(result.pp)],
            ["", "", "", f"tg{round(result.tg.tokens)}", _rate(result.tg)]]
    lines = [table(rows, right={4})]
    if result.ceiling_tps:
        lines.append(f"generation is {result.efficiency:.0%} of this machine's bandwidth ceiling "
                     f"({result.ceiling_tps:,.1f} tok/s: bandwidth ÷ bytes read per token)")
    elif result.engine == "remote":
        lines.append("bandwidth ceiling: n/a (the model runs on a server)")
    else:
        lines.append("bandwidth ceiling: unknown until `roost doctor --measure` has measured this machine's memory")
    load = f"load {result.load_s:.2f} s · " if result.load_s is not None else ""
    lines.append(f"{load}TTFT {result.ttft_s.mean:.3f} ± {result.ttft_s.sd:.3f} s at pp{round(result.pp.tokens)}"
                 f" · {result.repetitions} repetitions after a warm-up · context {result.n_ctx}")
    if result.short_tg:
        lines.append(f"note: {result.short_tg} generation run(s) ended early at an end-of-text token")
    return "\n".join(lines)


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def bench_history(records: list[dict]) -> str:
    rows = [["when", "model", "engine", "device", "pp t/s", "tg t/s", "of ceiling", "TTFT s"]]
    for r in records:
        eff = f"{r['efficiency']:.0%}" if r.get("efficiency") else "n/a"
        rows.append([_when(r["when"]), r["model"], r["engine"], r["device"],
                     f"pp{round(r['pp']['tokens'])} {_rate(r['pp'])}", f"tg{round(r['tg']['tokens'])} {_rate(r['tg'])}",
                     eff, f"{r['ttft_s']['mean']:.3f}"])
    return table(rows, right={4, 5, 6, 7})


# -- roost eval ------------------------------------------------------------------------------

WIDTH = 80


def _short(text: str, width: int) -> str:
    """Text cut to width from the left: a path's end says most about it."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def labels(models: list[str]) -> list[str]:
    """How models named on the command line are shown: a file by its name (which says
    the quant), unless two share it."""
    import os

    names = [m if m.startswith(("http://", "https://")) or os.sep not in m else os.path.basename(os.path.normpath(m))
             for m in models]
    return [n if names.count(n) == 1 else m for n, m in zip(names, models)]


def _accuracy(correct: int, n: int, interval) -> str:
    lo, hi = interval
    return f"{correct / n:.0%} ({lo:.0%}–{hi:.0%})" if n else "n/a"


def evaluation(results, changes, set_name: str, items=()) -> str:
    """The models side by side, then what changed from the first one, and how each
    reasoning model was given room to think."""
    import textwrap

    n = len(results[0].answers)
    rows = [["model", "engine", "right", "accuracy (95% CI)", "tok/s", "memory"]]
    for r in results:
        rows.append([_short(r.model, 22), f"{r.engine} {r.device}", f"{r.correct}/{n}",
                     _accuracy(r.correct, n, r.interval), f"{r.tps:,.1f}", size(r.device_bytes or r.peak_rss_bytes)])
    lines = [f"{set_name} set, {n} items, greedy", table(rows, right={2, 4, 5})]
    for c in changes:
        parts = [f"{len(c.now_right)} now right" + (f" ({', '.join(c.now_right)})" if c.now_right else ""),
                 f"{len(c.now_wrong)} now wrong" + (f" ({', '.join(c.now_wrong)})" if c.now_wrong else ""),
                 f"{c.outputs_differ} of {n} answers differ"]
        lines += textwrap.wrap(f"{c.model} vs {results[0].model}: " + "; ".join(parts), WIDTH,
                               subsequent_indent="  ", break_on_hyphens=False)
    lines.append("memory: the most held after any item (GPU memory where the model runs on one)")
    for r in results:
        if r.thinking:
            lines += textwrap.wrap(thinking(r, items), WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


def thinking(result, items=()) -> str:
    """A reasoning model's room to think, and what it used: the answer alone was scored."""
    t = result.thinking
    sizes = {i.max_tokens for i in items}
    if len(sizes) == 1:
        answer = sizes.pop()
        tokens = f"max_tokens {answer + t.added_tokens} ({answer} for the answer, "
    else:
        tokens = f"max_tokens each item's + {t.added_tokens} ("
    if t.budget is None:
        head = f"{result.model}: thinking off (--think off)"
        tokens += f"{t.added_tokens} for a thought closed at once)"
    else:
        head = f"{result.model} thinks ({t.format} format{f', --think {t.think}' if t.think else ''}): " \
               f"budget {t.budget} tokens, then roost closes the thought"
        tokens += f"{t.budget} for the thought, {t.added_tokens - t.budget} to close it)"
    # A model that ends its turn inside the thought gave no answer: scored wrong, and said.
    unanswered = sum(1 for a in result.answers if a.reasoning_tokens and not a.output.strip())
    ended = f", {unanswered} of {len(result.answers)} ended inside it (no answer)" if unanswered else ""
    return f"{head}; {tokens}; {result.reasoning_mean:,.0f} thinking tokens an item{ended}; only the answer is scored"


def answers(result, items) -> str:
    """Every item's verdict and the first line of the answer, one line each, with a
    reasoning model's thinking tokens before it."""
    by_id = {i.id: i for i in items}
    width = max(len(a.id) for a in result.answers)
    thought = max(len(str(a.reasoning_tokens)) for a in result.answers)
    lines = [f"{result.model}:" + (" (tok: thinking tokens before the answer)" if result.thinking else "")]
    for a in result.answers:
        said = " ".join(a.output.split()) or "(nothing)"
        head = f"  {'✓' if a.correct else '✗'} {a.id.ljust(width)}  "
        if result.thinking:
            head += f"{str(a.reasoning_tokens).rjust(thought)} tok  "
        if not a.correct:
            head += f"[wanted {by_id[a.id].wanted()}] "
        room = max(10, WIDTH - len(head))
        lines.append(head + (said if len(said) <= room else said[: room - 1] + "…"))
    return "\n".join(lines)


def drift(model: str, d, diff) -> str:
    """A golden-output drift warning: what was recorded, and each changed answer's diff."""
    was = d.recorded
    when = _when(was["when"]) if was.get("when") else "?"
    lines = [f"roost: warning: {model} drifted from its golden outputs "
             f"({len(d.changed)} answers changed; recorded {when} with {was.get('engine')} {was.get('version')} "
             f"on {was.get('device')}" + _budget(was.get("thinking")) + ")"]
    for item_id, old, new in d.changed:
        lines.append(f"  {item_id}:")
        lines += [f"    {line[:1]} {line[1:]}" for line in diff(old, new)]
    if d.missing:
        lines.append(f"  not run now: {', '.join(d.missing)}")
    if d.new:
        lines.append(f"  not in the golden outputs: {', '.join(d.new)}")
    if d.reworded:
        lines.append(f"  prompt changed since, not compared: {', '.join(d.reworded)} (--golden-update stores anew)")
    return "\n".join(lines)


def _budget(thinking: dict | None) -> str:
    """A golden record's thinking room (its answers alone were stored)."""
    if not thinking:
        return ""
    return ", thinking off" if thinking.get("budget") is None else f", thinking budget {thinking['budget']}"


def perplexity(results) -> str:
    import textwrap

    ref = results[0]
    head = f"perplexity on {ref.text}: {ref.chunks} chunk(s), {ref.tokens:,} tokens scored" + (
        f"; KL divergence and top-1 agreement against {ref.model}" if len(results) > 1 else "")
    lines = textwrap.wrap(head, WIDTH, break_on_hyphens=False)
    rows = [["model", "PPL", "Δ PPL", "KL mean", "KL 99%", "top-1", "tok/s"]]
    for i, r in enumerate(results):
        compared = r.kl_mean is not None
        rows.append([
            _short(r.model, 18), f"{r.ppl:.2f}±{r.ppl_err:.2f}",
            "ref" if i == 0 else f"{r.ppl / ref.ppl - 1:+.2%}",
            f"{r.kl_mean:.4f}±{r.kl_err:.4f}" if compared else "—",
            f"{r.kl_p99:.4f}" if compared else "—",
            f"{r.top1:.1%}" if compared else "—",
            f"{r.tps:,.0f}",
        ])
    lines.append(table(rows, right={1, 2, 3, 4, 5, 6}))
    lines += [f"not compared: {r.model}: {r.why}" for r in results if r.why]
    if any(r.tokens != ref.tokens for r in results):
        lines.append("note: the models read the text as different tokens: their perplexities are per their own tokens")
    return "\n".join(lines)


def eval_history(records: list[dict]) -> str:
    rows = [["when", "model", "engine", "set", "right", "accuracy (95% CI)", "tok/s"]]
    for r in records:
        rows.append([_when(r["when"]), _short(r["model"], 24),
                     f"{r['engine']} {r['device']}", _short(r["set"], 16), f"{r['correct']}/{r['items']}",
                     _accuracy(r["correct"], r["items"], r["interval"]), f"{r['tps']:,.1f}"])
    return table(rows, right={4, 6})


def perplexity_history(records: list[dict]) -> str:
    rows = [["when", "model", "engine", "text", "tokens", "PPL", "KL mean", "top-1"]]
    for r in records:
        rows.append([_when(r["when"]), _short(r["model"], 24),
                     f"{r['engine']} {r['device']}", _short(r["text"], 16), f"{r['tokens']:,}",
                     f"{r['ppl']:.2f}±{r['ppl_err']:.2f}",
                     "—" if r["kl_mean"] is None else f"{r['kl_mean']:.4f}",
                     "—" if r["top1"] is None else f"{r['top1']:.1%}"])
    return table(rows, right={4, 5, 6, 7})
