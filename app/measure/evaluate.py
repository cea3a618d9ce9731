"""`roost eval`: models over an eval set, greedy, each through the one Engine interface;
accuracy with its confidence interval, generation speed, memory, and which items changed
between the first model and the others."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from roost.backends.base import Done, Engine, Message, Params
from roost.errors import EngineCrashed
from roost.measure.eval_set import Item


@dataclass(frozen=True)
class Answer:
    id: str
    output: str
    correct: bool
    generated: int
    stop_reason: str


@dataclass
class ModelResult:
    model: str  # as the user named it
    engine: str
    device: str
    set: str
    answers: list[Answer] = field(default_factory=list)
    generated: int = 0  # decoded tokens after each answer's first, which prefill yields
    decode_s: float = 0.0
    peak_rss_bytes: int | None = None  # the most the process running the model held after any item
    device_bytes: int | None = None  # GPU memory the engine holds, where known
    load_s: float | None = None
    when: float = 0.0
    crashed: str | None = None  # the engine's process died: how, and at which item (answers: those before it)

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.answers) if self.answers else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, len(self.answers))

    @property
    def tps(self) -> float:
        return self.generated / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self, answers: bool = True) -> dict:
        d = asdict(self)
        if not answers:
            d.pop("answers")
            d["wrong"] = [a.id for a in self.answers if not a.correct]
        lo, hi = self.interval
        d.update(items=len(self.answers), correct=self.correct, accuracy=round(self.accuracy, 4),
                 interval=[round(lo, 4), round(hi, 4)], tps=round(self.tps, 2))
        return d


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for k successes in n (95% by default): unlike the
    normal approximation it stays inside [0, 1] and is honest for small n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run(engine: Engine, items: list[Item], *, model: str, set_name: str, load_s: float | None,
        cancel=None, on_item=None) -> ModelResult:
    """Every item, greedy; on_item(i, answer) hears each as it is scored. An engine that
    crashes ends the run there, marked crashed, with the answers it gave before."""
    info = engine.info()
    result = ModelResult(model, info.engine, info.device, set_name, load_s=load_s)
    for i, item in enumerate(items):
        messages: list[Message] = [{"role": "system", "content": item.system}] if item.system else []
        messages.append({"role": "user", "content": item.question})
        params = Params(temperature=0, seed=0, max_tokens=item.max_tokens)
        try:
            done = next(e for e in engine.stream(messages, params, cancel) if isinstance(e, Done))
            reading = engine.memory()
        except EngineCrashed as e:
            result.crashed = f"{e} (item {i + 1} of {len(items)}, {item.id})"
            break
        if done.stats.stop_reason == "cancelled":
            raise KeyboardInterrupt
        stats = done.stats
        answer = Answer(item.id, done.text, item.check(done.text), stats.generated_tokens, stats.stop_reason)
        result.answers.append(answer)
        result.generated += max(0, stats.generated_tokens - 1)
        result.decode_s += stats.decode_s
        result.peak_rss_bytes = _most(result.peak_rss_bytes, reading.rss_bytes)
        result.device_bytes = _most(result.device_bytes, reading.device_used_bytes)
        if on_item:
            on_item(i, answer)
    result.when = time.time()
    return result


def _most(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class Change:
    model: str
    now_right: list[str]
    now_wrong: list[str]
    outputs_differ: int  # items whose answer text changed at all, scored the same or not


def changes(first: ModelResult, other: ModelResult) -> Change:
    theirs = {a.id: a for a in other.answers}
    right, wrong, differ = [], [], 0
    for a in first.answers:
        b = theirs[a.id]
        differ += a.output != b.output
        if b.correct and not a.correct:
            right.append(a.id)
        elif a.correct and not b.correct:
            wrong.append(a.id)
    return Change(other.model, right, wrong, differ)
