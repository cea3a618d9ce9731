"""Required tool calls from a small model: how many are valid, and what the call's grammar
costs in speed.

For each question, the model (by default the bundled SmolLM2-135M, which cannot call a
tool unaided) answers with tool_choice "required", sampled at temperature 0.8 from several
seeds: a call counts as valid when exactly one came back, to one of the tools, with
arguments that parse and match its parameters' schema (jsonschema). The same questions
with tool_choice "none" (the tools shown, free text) give the speed without a grammar.
Printed: the valid share (goal 100 %) and decode tok/s with the grammar ÷ without.

    .venv/bin/python bench/tool_calls.py [--model PATH] [--seeds 5]

On a shared machine, run it when nothing else is.
"""

from __future__ import annotations

import argparse
import json

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"},
                                          "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "add_event", "description": "Put an event in the calendar",
                                      "parameters": {"type": "object", "properties": {
                                          "title": {"type": "string", "maxLength": 40},
                                          "day": {"type": "integer", "minimum": 1, "maximum": 31},
                                          "guests": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
                                          "required": ["title", "day"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web",
                                      "parameters": {"type": "object", "properties": {
                                          "query": {"type": "string"}, "max_results": {"type": "integer"}},
                                          "required": ["query"]}}},
]
QUESTIONS = [
    "What is the weather like in Paris today?",
    "Put lunch with Sam on the 12th in my calendar.",
    "Find me recent news about volcanoes.",
    "Is it cold in Oslo right now, in fahrenheit?",
    "Book a dentist appointment on the 3rd with Ana and Bo.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf (default: the bundled demo)")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    import jsonschema

    from roost.backends import load
    from roost.backends.base import Done, Params, Plan
    from roost.models import catalog

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    engine = load(args.model or catalog.demo_model_path(), Plan(n_ctx=2048), engine="llama")
    valid = total = 0
    rates: dict[str, list[float]] = {"required": [], "none": []}
    try:
        for question in QUESTIONS:
            for seed in range(args.seeds):
                for choice in rates:
                    params = Params(max_tokens=128, seed=seed, tools=json.dumps(TOOLS), tool_choice=choice)
                    done = [e for e in engine.stream([{"role": "user", "content": question}], params)
                            if isinstance(e, Done)][0]
                    if done.stats.generated_tokens > 8:
                        rates[choice].append(done.stats.decode_tps)
                    if choice != "required":
                        continue
                    total += 1
                    if len(done.tool_calls) == 1 and done.tool_calls[0].name in schemas:
                        call = done.tool_calls[0]
                        try:
                            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
                            valid += 1
                        except jsonschema.ValidationError as e:
                            print(f"  invalid: {call.name} {call.arguments}: {e.message}")
                    else:
                        print(f"  no call: {done.text[:80]!r}")
    finally:
        engine.close()

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    print(f"valid calls: {valid}/{total} ({100 * valid / total:.0f} %)")
    print(f"decode tok/s: required {mean(rates['required']):.1f}, none {mean(rates['none']):.1f}, "
          f"ratio {mean(rates['required']) / mean(rates['none']):.2f}")


if __name__ == "__main__":
    main()
