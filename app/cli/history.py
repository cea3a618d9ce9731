"""roost history: the saved conversations listed, shown, exported and removed."""

from __future__ import annotations

import json
import os
import sys
import time

from roost.cli.terminal import confirm
from roost.errors import RoostError, UsageError


def cmd_history(args) -> int:
    from roost import history

    action = args.action or "list"
    given = (("--format", args.format, "export"), ("-o", args.output, "export"), ("-y", args.yes, "rm"),
             ("--json", args.json, "list"))
    misplaced = [(flag, goes) for flag, value, goes in given if value and goes != action]
    if misplaced:
        raise UsageError(f"{misplaced[0][0]} goes with roost history {misplaced[0][1]}, not {action}")
    if action == "list":
        if args.id:
            raise UsageError(f"say what to do with {args.id}: roost history show|export|rm ID")
        return _list(args, history)
    if not args.id:
        raise UsageError(f"give the conversation: roost history {action} ID (roost history lists them)")
    conv = history.find(args.id)
    if action == "show":
        _show(conv, history)
    elif action == "export":
        text = (json.dumps(history.as_json(conv), indent=2, ensure_ascii=False) + "\n" if args.format == "json"
                else history.markdown(conv))
        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as e:
                raise RoostError(f"cannot write {args.output}: {e.strerror}") from None
            print(os.path.abspath(args.output))
        else:
            sys.stdout.write(text)
    else:  # rm
        if not args.yes:
            if sys.stdin is None or not sys.stdin.isatty():
                raise UsageError(f"give -y to remove conversation {conv.id} without being asked")
            if not confirm(f"Remove conversation {conv.id} for good?"):
                print("kept", file=sys.stderr)
                return 1
        os.remove(conv.path)
        print(f"removed {conv.id}")
    return 0


def _list(args, history) -> int:
    summaries = history.conversations()
    shorts = history.short_ids([s.id for s in summaries])
    if args.json:
        print(json.dumps([{"id": s.id, "short_id": shorts[s.id], "path": s.path, "created": s.created,
                           "updated": s.updated, "model": s.model, "turns": s.turns, "title": s.title,
                           "marks": s.marks, "damaged_lines": s.damaged} for s in summaries],
                         indent=2, ensure_ascii=False))
        return 0
    if not summaries:
        print("no saved conversations yet (roost chat saves each one)")
        return 0
    from roost import report

    rows = [["ID", "DATE", "MODEL", "TURNS", "FIRST QUESTION"]]
    for s in summaries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated))
        note = f"  [damaged: {s.damaged} unreadable line{'s' * (s.damaged > 1)}]" if s.damaged else ""
        rows.append([shorts[s.id], when, s.model, str(s.turns), s.title + note])
    print(report.table(rows, right={3}))
    return 0


def _show(conv, history) -> None:
    """As roost run shows an answer at a terminal: the thought dimmed (marked "thought:"
    where there is no colour), the answer plain, then its stats line."""
    from roost.cli.run import DIM, PLAIN

    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    dim, plain = (DIM, PLAIN) if colour else ("", "")
    saved = conv.read()
    out = [f"{dim}{name.lower()}: {value}{plain}" for name, value in
           [("Model", saved.meta.get("model") or "?"), *history.settings(saved.meta)]]
    if saved.damaged:
        out.append(f"{dim}damaged: {saved.damaged} line{'s' * (saved.damaged > 1)} could not be read{plain}")
    answer = 0
    for message in saved.messages:
        if message["role"] == "user":
            out += ["", "\n".join("> " + line for line in message["content"].strip().splitlines())]
        elif message["role"] == "assistant":
            out.append("")
            if message.get("reasoning"):
                thought = message["reasoning"].strip()
                out.append(f"{dim}{thought}{plain}" if colour else
                           "\n".join("thought: " + line for line in thought.splitlines()))
            out.append(message["content"].strip())
            notes = [n for n in (history.stats_line(message), history.mark_words(saved.marks.get(answer))) if n]
            out += [f"{dim}{n}{plain}" for n in notes]
            answer += 1
    print("\n".join(out))


def eval_from_history(args) -> int:
    """roost eval --from-history: the marked answers written as an eval set."""
    from roost import history, paths
    from roost.measure import eval_set

    if args.models or args.set or args.history or args.ppl:
        raise UsageError("--from-history only builds the set: run it with roost eval MODEL --set FILE")
    items, untyped = history.eval_records()
    if not items:
        why = f" ({untyped} marked bad without a right answer typed)" if untyped else ""
        raise RoostError(f"no marked answers to build an eval set from{why}: mark answers in roost chat "
                         "(Ctrl+G good, Ctrl+F bad with the right answer)")
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    eval_set.parse(text, "the built set")  # what is written, roost eval reads
    out = args.out or os.path.join(paths.data_dir(), "from-history.jsonl")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise RoostError(f"cannot write {out}: {e.strerror}") from None
    skipped = f"; {untyped} marked bad without a right answer left out" if untyped else ""
    print(f"{len(items)} item{'s' * (len(items) > 1)} from your marked answers{skipped}: {os.path.abspath(out)}",
          file=sys.stderr)
    print(f"run it: roost eval MODEL [MODEL ...] --set {os.path.abspath(out)}", file=sys.stderr)
    print(os.path.abspath(out))
    return 0
