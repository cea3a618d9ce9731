"""Perplexity of models on a text, and how far each model's next-token distributions lie
from a reference's: the mean KL divergence and top-1 agreement, as llama.cpp's
perplexity tool measures them when the community compares quants.

The text is cut into chunks of `ctx` tokens (BOS first where the model wants one), each
evaluated from an empty cache, and only the second half of each chunk is scored, so that
every scored token has at least ctx/2 tokens of context (llama.cpp's convention). The
reference's log-probabilities wait on disk, in 16 bits as llama.cpp's KL base file keeps
them, so that one model at a time is in memory; the other models' are rounded the same
way and both renormalised before they are compared, so a model against itself gives a
KL divergence of exactly 0.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from roost.backends.base import Scorer
from roost.errors import UsageError

MIN_SCORED = 16


@dataclass
class Perplexity:
    model: str
    engine: str
    device: str
    text: str  # the file scored
    chunks: int
    tokens: int  # scored
    nll_mean: float  # mean negative log-likelihood per scored token, in nats
    nll_sd: float
    tps: float  # tokens evaluated per second
    # Against the reference (the first model); None for the reference itself, or where
    # the two cannot be compared (why says why).
    kl_mean: float | None = None
    kl_sd: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1: float | None = None  # how often the two agree on the most likely next token
    why: str | None = None
    when: float = 0.0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_mean)

    @property
    def ppl_err(self) -> float:
        return self.ppl * self.nll_sd / math.sqrt(self.tokens)

    @property
    def kl_err(self) -> float | None:
        return None if self.kl_sd is None else self.kl_sd / math.sqrt(self.tokens)

    @property
    def top1_err(self) -> float | None:
        return None if self.top1 is None else math.sqrt(self.top1 * (1 - self.top1) / self.tokens)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(ppl=round(self.ppl, 4), ppl_err=round(self.ppl_err, 4),
                 kl_err=None if self.kl_err is None else round(self.kl_err, 6),
                 top1_err=None if self.top1_err is None else round(self.top1_err, 6))
        return d


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _kept(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities as the reference's are kept: 16 bits, clipped to float16's range."""
    return np.maximum(logprobs, -6e4).astype(np.float16)


def chunks(tokens: list[int], bos: list[int], ctx: int, limit: int | None = None) -> list[list[int]]:
    """The text cut into whole chunks of ctx tokens, each opening with BOS where the model
    wants one; a text shorter than one chunk is one chunk of its own length."""
    body = ctx - len(bos)
    count = len(tokens) // body if len(tokens) >= body else 1
    if limit:
        count = min(count, limit)
    return [bos + tokens[i * body : (i + 1) * body] for i in range(count)]


def scored(chunk: list[int]) -> int:
    """How many of a chunk's tokens are scored: those of its second half."""
    return len(chunk) - 1 - len(chunk) // 2


class Reference:
    """The first model's scored log-probabilities, its top-1 picks and its tokens."""

    def __init__(self, pieces: list[list[int]], n_vocab: int):
        self.pieces = pieces
        self.n_vocab = n_vocab
        rows = sum(scored(c) for c in pieces)
        need = rows * n_vocab * 2
        folder = tempfile.gettempdir()
        free = shutil.disk_usage(folder).free
        if need > free * 0.9:
            raise UsageError(f"the reference's token distributions need {need / 2**30:.1f} GiB in {folder} and "
                             f"{free / 2**30:.1f} GiB is free: score fewer chunks (--chunks) or set TMPDIR")
        self._file = tempfile.TemporaryFile(prefix="roost-kl-")
        self.logprobs = np.memmap(self._file, dtype=np.float16, mode="w+", shape=(rows, n_vocab))
        self.top = np.empty(rows, dtype=np.int64)

    def close(self) -> None:
        del self.logprobs
        self._file.close()


def score(engine: Scorer, text: str, ctx: int, *, model: str, text_name: str, limit: int | None = None,
          reference: Reference | None = None, keep: bool = False, cancel=None, on_chunk=None):
    """(Perplexity, the Reference to compare later models with when keep is set)."""
    bos = engine.tokenize("")  # [BOS] where the model opens every text with one
    tokens = engine.tokenize(text)[len(bos):]
    pieces = chunks(tokens, bos, ctx, limit)
    total = sum(scored(c) for c in pieces)
    if total < MIN_SCORED:
        raise UsageError(f"{text_name} is {len(tokens)} tokens long for {model}: too short to score; "
                         f"give at least {2 * MIN_SCORED + 2} tokens of text (thousands are better)")
    info = engine.info()
    why = None
    if reference is not None and pieces != reference.pieces:
        why, reference = "it reads the text as other tokens than the reference does", None
    kept = None
    nll = np.empty(total)
    kl = np.empty(total)
    agree = 0
    row, evaluated, seconds = 0, 0, 0.0
    try:
        for i, chunk in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            if on_chunk:
                on_chunk(i, len(pieces))
            started = time.perf_counter()
            logits = engine.logits(chunk)
            seconds += time.perf_counter() - started
            evaluated += len(chunk)
            if reference is not None and logits.shape[1] != reference.n_vocab:
                why, reference = f"its vocabulary has {logits.shape[1]} tokens, the reference's {reference.n_vocab}", None
            first = len(chunk) // 2
            logprobs = log_softmax(logits[first:-1])
            n = len(logprobs)
            nll[row : row + n] = -logprobs[np.arange(n), chunk[first + 1 :]]
            top = logprobs.argmax(axis=1)
            if keep:
                if kept is None:
                    kept = Reference(pieces, logits.shape[1])
                kept.logprobs[row : row + n] = _kept(logprobs)
                kept.top[row : row + n] = top
            if reference is not None:
                a = log_softmax(reference.logprobs[row : row + n].astype(np.float64))
                b = log_softmax(_kept(logprobs).astype(np.float64))
                kl[row : row + n] = np.maximum((np.exp(a) * (a - b)).sum(axis=1), 0.0)
                agree += int((reference.top[row : row + n] == top).sum())
            row += n
    except BaseException:
        if kept is not None:
            kept.close()
        raise
    result = Perplexity(model, info.engine, info.device, text_name, len(pieces), total, float(nll.mean()),
                        float(nll.std(ddof=1)), evaluated / seconds if seconds else 0.0, why=why, when=time.time())
    if reference is not None:
        result.kl_mean, result.kl_sd = float(kl.mean()), float(kl.std(ddof=1))
        result.kl_p99, result.kl_max = float(np.percentile(kl, 99)), float(kl.max())
        result.top1 = agree / total
    return result, kept
