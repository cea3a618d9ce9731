"""`roost eval`: models over an eval set, greedy, each through the one Engine interface;
accuracy with its confidence interval, generation speed, memory, and which items changed
between the first model and the others. A reasoning model's answer is scored, never its
thought, and it is given room to think first (`Thinking`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from roost.backends.base import Done, Engine, Message, Params
from roost.errors import EngineCrashed
from roost.measure.eval_set import Item


# The thinking budget when --think-budget is not given. Closed at the budget, a thought
# still ends in an answer (the loop writes the closing tag, as llama.cpp's
# --reasoning-budget does), so the budget bounds an item's time rather than deciding
# whether it is answered; the built-in set's items are one-step questions, and 512
# tokens keeps a 52-item run to about 30,000 tokens.
DEFAULT_THINK_BUDGET = 512
# What a budget's closing text may take: 6 tokens for gpt-oss's harmony header, 1 to 5
# for a <think> tag; 16 leaves room for a vocabulary that spells its tag out.
CLOSE_ROOM = 16


@dataclass(frozen=True)
class Thinking:
    """How a reasoning model is run over a set: each item's max_tokens grows by
    `added_tokens`, the budget and the closing text's room, so that its answer keeps the
    tokens the item gives it however long the model thinks."""

    format: str  # what the model writes (EngineInfo.reasoning)
    think: str | None  # --think, passed on; None: the model's own default
    budget: int | None  # thinking tokens before the thought is closed; None with --think off
    added_tokens: int


def thinking(fmt: str | None, think: str | None, budget: int | None) -> Thinking | None:
    """The room a model gets to think; None for a model that does not reason."""
    if fmt is None:
        return None
    if think == "off":  # a template that cannot switch it off closes the thought at once
        return Thinking(fmt, think, None, CLOSE_ROOM)
    budget = DEFAULT_THINK_BUDGET if budget is None else budget
    return Thinking(fmt, think, budget, budget + CLOSE_ROOM)


@dataclass(frozen=True)
class Answer:
    id: str
    output: str  # the answer alone: what is scored and compared (a thought is neither)
    correct: bool
    generated: int  # the thought's tokens included
    stop_reason: str
    reasoning_tokens: int = 0


@dataclass
class ModelResult:
    model: str  # as the user named it
    engine: str
    device: str
    set: str
    thinking: Thinking | None = None  # None: the model does not reason
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

    @property
    def reasoning_tokens(self) -> int:
        return sum(a.reasoning_tokens for a in self.answers)

    @property
    def reasoning_mean(self) -> float:
        return self.reasoning_tokens / len(self.answers) if self.answers else 0.0

    def as_dict(self, answers: bool = True) -> dict:
        d = asdict(self)
        if not answers:
            d.pop("answers")
            d["wrong"] = [a.id for a in self.answers if not a.correct]
        lo, hi = self.interval
        d.update(items=len(self.answers), correct=self.correct, accuracy=round(self.accuracy, 4),
                 interval=[round(lo, 4), round(hi, 4)], tps=round(self.tps, 2),
                 reasoning_tokens=self.reasoning_tokens, reasoning_mean=round(self.reasoning_mean, 1))
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
        think: str | None = None, think_budget: int | None = None, cancel=None, on_item=None) -> ModelResult:
    """Every item, greedy; on_item(i, answer) hears each as it is scored. An engine that
    crashes ends the run there, marked crashed, with the answers it gave before. `think`
    and `think_budget` are --think and --think-budget: passed on, and for a model that
    reasons (its engine says so before the first item) the budget has a default."""
    info = engine.info()
    plan = thinking(info.reasoning, think, think_budget)
    result = ModelResult(model, info.engine, info.device, set_name, thinking=plan, load_s=load_s)
    budget = plan.budget if plan else think_budget  # a server that does not say may still reason
    for i, item in enumerate(items):
        messages: list[Message] = [{"role": "system", "content": item.system}] if item.system else []
        messages += [dict(m) for m in item.before]
        messages.append({"role": "user", "content": item.question})
        params = Params(temperature=0, seed=0, max_tokens=item.max_tokens + (plan.added_tokens if plan else 0),
                        think=think, think_budget=budget)
        try:
            done = next(e for e in engine.stream(messages, params, cancel) if isinstance(e, Done))
            reading = engine.memory()
        except EngineCrashed as e:
            result.crashed = f"{e} (item {i + 1} of {len(items)}, {item.id})"
            break
        if done.stats.stop_reason == "cancelled":
            raise KeyboardInterrupt
        stats = done.stats
        answer = Answer(item.id, done.text, item.check(done.text), stats.generated_tokens, stats.stop_reason,
                        stats.reasoning_tokens)
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
