"""TeleQnA pairs: each multiple-choice question of TeleQnA's official JSON gives one pair per distractor (the
correct option against it), under a prompt that lists the options; malformed entries are skipped with a reason.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from rl.rm.pairs.format import Pair
from rl.rm.pairs.report import Report

TELEQNA_SECTION = "teleqna"
_OPTION_KEY = re.compile(r"^option (\d+)$")
_ANSWER = re.compile(r"^\s*option\s*(\d+)\s*:\s*(.*)$", re.DOTALL | re.IGNORECASE)


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def teleqna_prompt(question: str, options: dict[int, str]) -> str:
    # The options are listed in the prompt: the answers are written "option k: <text>", and the number only
    # means something next to the list; it also makes the task the benchmark's (pick one of the given options),
    # and every pair of a question shares this prompt, so the RM compares answers to one identical context.
    lines = [question.strip(), ""] + [f"option {k}: {options[k]}" for k in sorted(options)]
    return "\n".join(lines + ["", "Answer with the correct option."])


def teleqna_entry_pairs(qid: str, entry) -> tuple[list[Pair], tuple[str, str] | None]:
    """Pairs of one TeleQnA entry, or ([], (reason, detail)) when it is malformed."""
    if not isinstance(entry, dict):
        return [], ("entry not an object", f"got {type(entry).__name__}")
    question = entry.get("question")
    if not isinstance(question, str) or not question.strip():
        return [], ("no question text", "'question' is missing or empty")
    options = {}
    for key, value in entry.items():
        m = _OPTION_KEY.match(key)
        if m:
            if not isinstance(value, str) or not value.strip():
                return [], ("empty option", f"{key!r} is empty or not a string")
            options[int(m.group(1))] = value.strip()
    if len(options) < 2:
        return [], ("fewer than 2 options", f"{len(options)} option(s)")
    answer = entry.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return [], ("no answer", "'answer' is missing or empty")
    m = _ANSWER.match(answer)
    if not m:
        return [], ("answer not 'option k: <text>'", repr(answer[:80]))
    k = int(m.group(1))
    if k not in options:
        return [], ("answer names a missing option", f"option {k} not among {sorted(options)}")
    if m.group(2).strip() and _norm(m.group(2)) != _norm(options[k]):
        return [], ("answer text differs from its option", f"{m.group(2)[:60]!r} vs option {k} {options[k][:60]!r}")
    category = entry.get("category")
    subset = category.strip() if isinstance(category, str) and category.strip() else "uncategorized"
    prompt = [{"role": "user", "content": teleqna_prompt(question, options)}]
    chosen = [{"role": "assistant", "content": f"option {k}: {options[k]}"}]
    pairs = [Pair(prompt=prompt, chosen=chosen, rejected=[{"role": "assistant", "content": f"option {j}: {text}"}],
                  subset=subset, section=TELEQNA_SECTION, group=qid, task_id=qid, source="teleqna")
             for j, text in sorted(options.items())
             if j != k and _norm(text) != _norm(options[k])]  # a distractor equal to the answer is not wrong
    if not pairs:
        return [], ("no distractor differs from the answer", f"{len(options)} options")
    return pairs, None


def question_part(qid: str, test_share: float) -> str:
    """"train" or "test" for a question, from a hash of its id: the same question always lands in the same part
    whichever file or order it comes in, so a reward model's TeleQnA test questions are never in its training pairs."""
    draw = int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "big") / 2**64
    return "test" if draw < test_share else "train"


def teleqna_pairs(path: str | Path, report: Report | None = None, part: str = "all",
                  test_share: float = 0.3, limit: int | None = None) -> list[Pair]:
    """TeleQnA's official JSON ({"question N": {...}}) -> one pair per distractor; malformed entries are
    skipped with their reason in `report`. An unreadable file or one that is not a JSON object raises.
    part: "all", or only the questions of the "train" / "test" part (question_part, `test_share` of them in test).
    limit: only the first `limit` usable questions of that part, in file order (a cheaper training set)."""
    if part not in ("all", "train", "test") or not 0.0 < test_share < 1.0:
        raise ValueError(f"part must be all, train or test and test_share in (0, 1); got {part!r}, {test_share}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions; got {limit}")
    report = report if report is not None else Report()
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: TeleQnA file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by question id, got {type(data).__name__}")
    pairs, questions = [], 0
    for qid, entry in data.items():
        if part != "all" and question_part(qid, test_share) != part:
            continue
        if limit is not None and questions == limit:
            break
        got, problem = teleqna_entry_pairs(qid, entry)
        if problem:
            category, detail = problem
            report.skip(f"teleqna: {category}", f"{path.name}: {qid!r}: {detail}")
            continue
        for p in got:
            report.pairs[p.subset] += 1
        pairs += got
        questions += 1
    return pairs
