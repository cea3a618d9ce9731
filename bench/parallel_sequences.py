"""Parallel sequences in one llama.cpp context vs the queue, measured in one run (#24).

What llama-cpp-python 0.3.x allows below its Llama class: one context made with n_seq_max
= N, each client's prompt a sequence of its own (seq_id 0..N-1), and one llama_decode per
step holding the next token of every sequence still answering (llama_batch_init, a token's
pos and seq_id, logits only where a token is sampled). That is what llama-server's
--parallel does. Set beside it: the same N prompts answered one after another in a context
of one sequence, as `roost serve`'s queue does today, by the same code with N = 1.

For N = 1, 2 and 4 clients (--clients) (different prompts, greedy, the demo model by default), printed:
aggregate decode tok/s each way (all tokens made ÷ the decode time; prefill apart), the
ratio, and whether each sequence's tokens are exactly its answer alone. Both kinds of KV
cache llama.cpp has for several sequences are tried: kv_unified (one buffer that every
sequence's cells share, what llama-server uses) and split (n_ctx / N cells each). Each way
is run in turn, alternating, so a busy machine slows them alike; the median of the repeats.

    .venv/bin/python bench/parallel_sequences.py [--model PATH] [--tokens 64] [--repeat 3] [--threads N] [--gpu-layers -1]
                                          [--clients 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaContext

from roost.backends import load
from roost.backends.base import Params, Plan
from roost.machine import hardware
from roost.models import catalog

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain how a bicycle works, part by part.",
    "Describe a day in the life of a lighthouse keeper.",
    "List the planets of the solar system and say one thing about each.",
    "Tell the history of the printing press.",
    "Explain how bread rises, step by step.",
    "Describe a walk through a rainforest at dawn.",
    "Write a letter from a sailor to home.",
]
N_CTX_PER_SEQUENCE = 512


def context(engine, n_seq: int, unified: bool) -> LlamaContext:
    """A context on the engine's loaded model, as the engine's own is made (threads, batch,
    flash attention, KV type), but for n_seq sequences."""
    params = llama_cpp.llama_context_params.from_buffer_copy(engine._llm.context_params)
    params.n_ctx = N_CTX_PER_SEQUENCE * n_seq
    params.n_seq_max = n_seq
    params.kv_unified = unified
    return LlamaContext(model=engine._llm._model, params=params, verbose=False)


def generate(ctx: LlamaContext, prompts: list[list[int]], tokens: int, vocab) -> tuple[list[list[int]], float]:
    """Greedy answers to every prompt at once, each its own sequence: one llama_decode per
    step for all of them. Returns the answers (up to an end of turn, or `tokens` tokens)
    and the time spent decoding after the prompts were read."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(sum(map(len, prompts)), 0, 1)
    try:
        def decode(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, pos, seq, sampled here)
            for i, (token, pos, seq, out) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, out
            batch.n_tokens = len(entries)
            if (rc := llama_cpp.llama_decode(ctx.ctx, batch)) != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

        def greedy(i: int) -> int:
            return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, i), shape=(n_vocab,)).argmax())

        entries = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
        decode(entries)
        sampled_at = {seq: i for i, (_, _, seq, out) in enumerate(entries) if out}  # a sequence's logits in the batch
        answers: list[list[int]] = [[] for _ in prompts]
        start = time.perf_counter()
        while sampled_at:
            step = []
            for seq, i in sampled_at.items():
                token = greedy(i)
                answers[seq].append(token)
                if not llama_cpp.llama_vocab_is_eog(vocab, token) and len(answers[seq]) < tokens:
                    step.append((token, len(prompts[seq]) + len(answers[seq]) - 1, seq, True))
            if step:
                decode(step)
            sampled_at = {seq: i for i, (_, _, seq, _) in enumerate(step)}
        return answers, time.perf_counter() - start
    finally:
        llama_cpp.llama_batch_free(batch)


def first_difference(answer: list[int], alone: list[int]) -> int | None:
    """Where an answer first parts from the same prompt's answer alone; None if they are the same."""
    if answer == alone:
        return None
    return next((i for i, (a, b) in enumerate(zip(answer, alone)) if a != b), min(len(answer), len(alone)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf (default: the demo model)")
    parser.add_argument("--tokens", type=int, default=64, help="at most this many tokens an answer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=hardware.default_threads())
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (-1: all)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], choices=range(1, len(PROMPTS) + 1))
    args = parser.parse_args()
    args.model = args.model or catalog.demo_model_path()  # asked only when not given: not every box has it

    engine = load(args.model, Plan(n_ctx=N_CTX_PER_SEQUENCE, n_threads=args.threads, n_gpu_layers=args.gpu_layers))
    vocab = engine._vocab
    prompts = [engine._prompt.chat([{"role": "user", "content": p}], Params()).tokens for p in PROMPTS]
    alone_ctx = context(engine, 1, unified=False)
    try:
        generate(alone_ctx, prompts[:1], 4, vocab)  # warm: the first decode's allocations are not the cost measured
        alone = [generate(alone_ctx, [p], args.tokens, vocab)[0][0] for p in prompts]  # each prompt's answer alone
        load_avg = os.getloadavg()
        print(f"{os.path.basename(args.model)}, {args.threads} threads, {args.gpu_layers} GPU layers, "
              f"up to {args.tokens} tokens an answer, "
              f"greedy, median of {args.repeat}; load average before: {load_avg[0]:.2f} {load_avg[1]:.2f}")
        for n in args.clients:
            ways = {"queue": None, "unified": context(engine, n, unified=True), "split": context(engine, n, unified=False)}
            times: dict[str, list[float]] = {way: [] for way in ways}
            answers: dict[str, list[list[int]]] = {}
            for ctx in ways.values():
                if ctx is not None:
                    generate(ctx, prompts[:n], 4, vocab)
            for _ in range(args.repeat):
                for way, ctx in ways.items():
                    if ctx is None:  # one after another, as the queue answers them
                        runs = [generate(alone_ctx, [p], args.tokens, vocab) for p in prompts[:n]]
                        answers[way], spent = [r[0][0] for r in runs], sum(r[1] for r in runs)
                    else:
                        answers[way], spent = generate(ctx, prompts[:n], args.tokens, vocab)
                    times[way].append(spent)
            made = sum(len(a) for a in answers["queue"])
            queue_tps = made / statistics.median(times["queue"])
            line = [f"{n} client{'s' if n > 1 else ' '}: queue {queue_tps:6.1f} tok/s"]
            for way in ("unified", "split"):
                tps = sum(len(a) for a in answers[way]) / statistics.median(times[way])
                parted = [first_difference(answers[way][i], alone[i]) for i in range(n)]
                same = f"{parted.count(None)}/{n} answers as alone"
                if any(parted):  # greedy picks that part where float sums differ, not garbage
                    same += ", others part at token " + ", ".join(str(p) for p in parted if p is not None)
                line.append(f"{way} {tps:6.1f} tok/s ({tps / queue_tps:.2f}x, {same})")
            print(", ".join(line))
            for ctx in ways.values():
                if ctx is not None:
                    ctx.close()
        load_avg = os.getloadavg()
        print(f"load average after: {load_avg[0]:.2f} {load_avg[1]:.2f}")
    finally:
        alone_ctx.close()
        engine.close()


if __name__ == "__main__":
    main()
