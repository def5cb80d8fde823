"""Preference pairs (prompt / chosen / rejected) for the Bradley-Terry reward model, in OpenRLHF-style JSONL.

    python -m rl.rm_pairs tau2 --split train --mode solo --out /tmp/pairs/train.jsonl
    python -m rl.rm_pairs rollouts runs/x/grpo --out /tmp/pairs/rollouts.jsonl
    python -m rl.rm_pairs teleqna ../shared/datasets/teleqna/sample.json --out /tmp/pairs/teleqna.jsonl

Three sources:
* `oracle_perturbation_pairs`: the oracle's gold conversation of a tau2 task (chosen) against the same
  conversation with one controlled perturbation (rejected) - a required action dropped, a wrong argument, a
  premature transfer to a human, ... The perturbed agent turns are REPLAYED through a fresh session and tau2's
  evaluator labels them: a pair is kept only if the verifier fails the perturbed episode, never on our say-so.
* `rollout_pairs`: a successful and a failed episode of the same task from a run's trajectories.jsonl.
* `teleqna_pairs`: TeleQnA multiple choice (official JSON): the correct option against each distractor.

Everything that is skipped (a task whose oracle fails, a perturbation the verifier still passes, a malformed
TeleQnA entry) is counted with its reason in a `Report`; nothing is dropped silently.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")
SOURCES = ("oracle_perturbation", "rollout", "teleqna")
TAU2_SECTION = "tau2-telecom"
ALL_KINDS = ("missing_action", "wrong_argument", "premature_transfer", "no_resolution", "wrong_order",
             "extra_harmful_action")


# ----------------------------------------------------------------------------------------------- the format
@dataclass
class Pair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    subset: str
    section: str
    group: str  # shared by the pairs with the same prompt + chosen (best-of-n groups)
    task_id: str | None = None
    source: str = ""
    margin: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["margin"] is None:
            del d["margin"]  # optional key (OpenRLHF's margin); absent rather than null
        return d


class PairFileError(ValueError):
    """A pair file (or one line of it) that cannot be used; the message names file:line and the field."""


def _messages(value, field_name: str, default_role: str) -> list[dict]:
    """Chat messages, or a string taken as one message of `default_role` (OpenRLHF's plain-text form)."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}] if value else []
    if not isinstance(value, list):
        raise ValueError(f"field {field_name!r}: expected a list of chat messages or a string, "
                         f"got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"field {field_name!r}[{i}]: expected a message object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise ValueError(f"field {field_name!r}[{i}].role: {m.get('role')!r} is not one of {ROLES}")
        content = m.get("content")
        # OpenAI assistant messages that only call tools may carry content null.
        if not (isinstance(content, str) or (content is None and m.get("tool_calls"))):
            raise ValueError(f"field {field_name!r}[{i}].content: expected a string, got {type(content).__name__}")
    return value


def _group_hash(prompt: list[dict], chosen: list[dict]) -> str:
    blob = json.dumps([prompt, chosen], sort_keys=True, ensure_ascii=False)
    return "h:" + hashlib.sha1(blob.encode()).hexdigest()[:16]


def pair_from_dict(d) -> Pair:
    """Validate one pair object. Raises ValueError naming the bad field.

    Only prompt/chosen/rejected are required (plain OpenRLHF data has nothing else): subset and section default
    to "default", group to a hash of prompt + chosen (which is what a group means)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in d:
            raise ValueError(f"missing field {key!r}")
    prompt = _messages(d["prompt"], "prompt", "user")
    chosen = _messages(d["chosen"], "chosen", "assistant")
    rejected = _messages(d["rejected"], "rejected", "assistant")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if not side:
            raise ValueError(f"field {key!r}: empty")
    if chosen == rejected:
        raise ValueError("fields 'chosen' and 'rejected' are identical")
    strings = {}
    for key, default in (("subset", "default"), ("section", "default"), ("group", None), ("source", "")):
        v = d.get(key, default)
        if v is not None and not (isinstance(v, str) and (v or key == "source")):
            raise ValueError(f"field {key!r}: expected a non-empty string, got {v!r}")
        strings[key] = v
    task_id = d.get("task_id")
    if task_id is not None and not isinstance(task_id, str):
        raise ValueError(f"field 'task_id': expected a string or null, got {type(task_id).__name__}")
    margin = d.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise ValueError(f"field 'margin': expected a number or null, got {margin!r}")
    return Pair(prompt, chosen, rejected, strings["subset"], strings["section"],
                strings["group"] or _group_hash(prompt, chosen), task_id, strings["source"],
                None if margin is None else float(margin))


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pair JSONL file. Any bad line raises PairFileError naming file:line and the field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PairFileError(f"{path}: pair file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PairFileError(f"{path}: cannot read pair file: {e}") from None
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairFileError(f"{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        try:
            pairs.append(pair_from_dict(obj))
        except ValueError as e:
            raise PairFileError(f"{path}:{lineno}: {e}") from None
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write pairs as JSONL atomically (temp file + rename): a reader never sees half a file. Every pair is
    validated first, so nothing is written that read_pairs would refuse."""
    path = Path(path)
    lines = []
    for i, p in enumerate(pairs):
        d = p.to_dict()
        try:
            pair_from_dict(d)
        except ValueError as e:
            raise ValueError(f"pair #{i} (group {p.group!r}): {e}") from None
        lines.append(json.dumps(d, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so the rename is atomic
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Report:
    """What a generator produced and what it skipped, with reasons (counts + the first few details)."""

    pairs: Counter = field(default_factory=Counter)  # subset -> pairs
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    details: list[str] = field(default_factory=list)
    max_details: int = 20
    replayed: Counter = field(default_factory=Counter)  # tau2 kinds: perturbed episodes replayed and scored
    verifier_passed: Counter = field(default_factory=Counter)  # ... of which tau2 still scored a success

    def skip(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if detail and len(self.details) < self.max_details:
            self.details.append(f"{reason}: {detail}")

    def lines(self) -> list[str]:
        out = [f"pairs: {sum(self.pairs.values())}"]
        out += [f"  {k}: {v}" for k, v in sorted(self.pairs.items())]
        if self.replayed:
            out.append("perturbed episodes replayed (of which the verifier still passed):")
            out += [f"  {k}: {v} ({self.verifier_passed[k]})" for k, v in sorted(self.replayed.items())]
        if self.skipped:
            out.append(f"skipped: {sum(self.skipped.values())}")
            out += [f"  {k}: {v}" for k, v in sorted(self.skipped.items())]
            out += [f"    e.g. {d}" for d in self.details]
        return out


def split_by_task(pairs: Iterable[Pair], held_out_task_ids: Iterable[str]) -> tuple[list[Pair], list[Pair]]:
    """(pairs whose task is not held out, pairs whose task is held out). E.g. held_out = split_ids("test"):
    an RM trained on the first list is evaluated on tasks it never saw."""
    held = set(held_out_task_ids)
    keep, out = [], []
    for p in pairs:
        (out if p.task_id in held else keep).append(p)
    return keep, out


# ------------------------------------------------------------------------------- tau2 oracle perturbations
TRANSFER_TOOL = "transfer_to_human_agents"
TRANSFER_SUMMARY = "The customer's issue could not be resolved; transferring to a human agent."
# tau2's telecom policy: after the transfer call the agent sends exactly this message.
TRANSFER_MESSAGE = "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."
# Extra state-changing actions that plausibly break a working phone/line. Whether one actually harms a given
# task is decided by tau2's verifier on the replayed episode; "{customer}"/"{line}" are the task's customer.
HARMFUL_ACTIONS = (
    ("toggle_airplane_mode", {}), ("toggle_data", {}), ("toggle_roaming", {}), ("toggle_data_saver_mode", {}),
    ("set_network_mode_preference", {"mode": "2g_only"}), ("toggle_wifi_calling", {}), ("connect_vpn", {}),
    ("suspend_line", {"customer_id": "{customer}", "line_id": "{line}", "reason": "Customer request"}),
    ("disable_roaming", {"customer_id": "{customer}", "line_id": "{line}"}),
)
MAX_PERMUTATIONS = 10  # wrong_order candidates tried per task


@dataclass
class _Gold:
    """One task's oracle episode, and what perturbations need to build variants of its agent turns."""

    task: object
    mode: str
    actions: list  # tau2 Actions, one agent turn each
    turns: list[str]  # oracle turns: one per action, then the ending
    ending: list[str]  # the turns that close the episode (solo: done; dual: closing words + stop)
    pools: dict  # valid ids from the DB: customer_id / line_id / bill_id -> [...], and per-customer lines/bills
    customer_line: tuple[str, str] | None
    user_tools: set
    schemas: dict  # tool name -> OpenAI parameters schema


def _action_turn(name: str, arguments: dict, requestor: str, mode: str) -> str:
    # Same rendering as envs.tau2_telecom.oracle.oracle_turns (checked for every task in _gold()).
    from envs.tau2_telecom.oracle import ask_user_text, tool_call_text

    if requestor == "assistant" or mode == "solo":
        return tool_call_text(name, arguments)
    return ask_user_text(name, arguments)


def _id_pools(db) -> dict:
    pools: dict = {"customer_id": [c.customer_id for c in db.customers], "line_id": [ln.line_id for ln in db.lines],
                   "bill_id": [b.bill_id for b in db.bills]}
    pools["lines_of"] = {c.customer_id: list(c.line_ids) for c in db.customers}
    pools["bills_of"] = {c.customer_id: list(c.bill_ids) for c in db.customers}
    pools["line_by_phone"] = {ln.phone_number: ln.line_id for ln in db.lines}
    pools["customer_of_line"] = {ln: c.customer_id for c in db.customers for ln in c.line_ids}
    return pools


def _customer_line(task, pools: dict) -> tuple[str, str] | None:
    """The task's customer and line: from the gold actions' arguments, else from the phone number the
    task's initialisation gives the customer."""
    for a in task.evaluation_criteria.actions or []:
        if "customer_id" in a.arguments and "line_id" in a.arguments:
            return a.arguments["customer_id"], a.arguments["line_id"]
    init = task.initial_state.initialization_actions if task.initial_state else None
    for a in init or []:
        line = pools["line_by_phone"].get(a.arguments.get("phone_number"))
        if line:
            return pools["customer_of_line"][line], line
    return None


def _gold(task, mode: str, world, pools: dict, schemas: dict) -> _Gold:
    from envs.tau2_telecom.oracle import oracle_turns

    actions = list(task.evaluation_criteria.actions or [])
    turns = oracle_turns(task, mode)
    rendered = [_action_turn(a.name, a.arguments, a.requestor, mode) for a in actions]
    if turns[:len(actions)] != rendered:
        raise RuntimeError("oracle_turns no longer renders one turn per gold action; update rl/rm_pairs.py")
    return _Gold(task, mode, actions, turns, turns[len(actions):], pools, _customer_line(task, pools),
                 set(world.user_tools), schemas)


def _alternatives(g: _Gold, tool: str, key: str, value, args: dict) -> list:
    """Other valid values of the same type for one argument; [] for free text (a different summary or reason
    is not a wrong argument)."""
    pools = g.pools
    if key == "line_id":  # another line of the same customer: the call still succeeds, on the wrong line
        same = [x for x in pools["lines_of"].get(args.get("customer_id"), []) if x != value]
        return same or [x for x in pools["line_id"] if x != value]
    if key == "bill_id":
        same = [x for x in pools["bills_of"].get(args.get("customer_id"), []) if x != value]
        return same or [x for x in pools["bill_id"] if x != value]
    if key in pools and isinstance(value, str):
        return [x for x in pools[key] if x != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        steps = (0.5, 1.0, 5.0) if isinstance(value, float) else (value + 1, value - 1)
        return [x for x in steps if x != value and x >= 0]
    prop = g.schemas.get(tool, {}).get("properties", {}).get(key, {})
    enum = _enum(prop, g.schemas.get(tool, {}).get("$defs", {}))
    if enum:
        return [x for x in enum if x != value]
    if key == "app_name":
        return [x for x in ("messaging", "browser") if x != value]
    if key == "permission":
        return [x for x in ("sms", "storage", "phone", "network") if x != value]
    return []


def _enum(prop: dict, defs: dict) -> list:
    if "enum" in prop:
        return list(prop["enum"])
    for alt in prop.get("anyOf", []):
        ref = alt.get("$ref", "")
        if ref.startswith("#/$defs/") and "enum" in defs.get(ref.split("/")[-1], {}):
            return list(defs[ref.split("/")[-1]]["enum"])
    return []


def _requestor(g: _Gold, tool: str) -> str:
    return "user" if tool in g.user_tools else "assistant"


# Each kind yields candidate agent-turn lists in a seeded order; the caller keeps those tau2 fails.
def _kind_missing_action(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    n = len(g.actions)
    if n < 2:
        return  # dropping the only action is doing nothing: that is no_resolution
    for i in rng.sample(range(n), n):
        yield g.turns[:i] + g.turns[i + 1:n] + g.ending


def _kind_wrong_argument(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    cands = [(i, k, alt) for i, a in enumerate(g.actions) for k, v in sorted(a.arguments.items())
             for alt in _alternatives(g, a.name, k, v, a.arguments)]
    rng.shuffle(cands)
    for i, key, alt in cands:
        a = g.actions[i]
        turn = _action_turn(a.name, {**a.arguments, key: alt}, a.requestor, g.mode)
        yield g.turns[:i] + [turn] + g.turns[i + 1:]


def _transfer_turns(g: _Gold) -> list[str]:
    from envs.tau2_telecom.world import DONE_TOOL

    call = _action_turn(TRANSFER_TOOL, {"summary": TRANSFER_SUMMARY}, "assistant", g.mode)
    # solo: nobody to talk to, the agent ends with `done`; dual: the policy's transfer message (the customer
    # then hangs up with ###TRANSFER###, a scored user stop).
    return [call, _action_turn(DONE_TOOL.name, {}, "assistant", "solo") if g.mode == "solo" else TRANSFER_MESSAGE]


def _kind_premature_transfer(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    if any(a.name == TRANSFER_TOOL for a in g.actions):
        return  # the gold answer is a transfer: transferring is right, not premature
    n = len(g.actions)
    cuts = list(range(1, n)) if n >= 2 else [0]  # midway: after some but not all of the needed actions
    for k in rng.sample(cuts, len(cuts)):
        yield g.turns[:k] + _transfer_turns(g)


def _kind_no_resolution(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    yield list(g.ending)


def _kind_wrong_order(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    n = len(g.actions)
    seen = {tuple(g.turns[:n])}
    for _ in range(MAX_PERMUTATIONS * 3):
        if len(seen) > MAX_PERMUTATIONS:
            break
        order = rng.sample(range(n), n)
        body = tuple(g.turns[i] for i in order)
        if body not in seen:
            seen.add(body)
            yield list(body) + g.ending


def _kind_extra_harmful_action(g: _Gold, rng: random.Random) -> Iterator[list[str]]:
    gold_names = {a.name for a in g.actions}
    cands = []
    for name, args in HARMFUL_ACTIONS:
        if name in gold_names:
            continue  # repeating a gold toggle would undo it: that is missing_action again, not an extra action
        if any(v in ("{customer}", "{line}") for v in args.values()):
            if g.customer_line is None:
                continue
            cust, line = g.customer_line
            args = {k: {"{customer}": cust, "{line}": line}.get(v, v) for k, v in args.items()}
        cands.append((name, args))
    n = len(g.actions)
    for name, args in rng.sample(cands, len(cands)):
        yield g.turns[:n] + [_action_turn(name, args, _requestor(g, name), g.mode)] + g.ending


KIND_GENERATORS = {
    "missing_action": _kind_missing_action,
    "wrong_argument": _kind_wrong_argument,
    "premature_transfer": _kind_premature_transfer,
    "no_resolution": _kind_no_resolution,
    "wrong_order": _kind_wrong_order,
    "extra_harmful_action": _kind_extra_harmful_action,
}
assert set(KIND_GENERATORS) == set(ALL_KINDS)


def _play(session, task, mode: str, turns: list[str]):
    """Replay agent turns through a fresh session -> (Episode, EvalResult)."""
    from envs.tau2_telecom.oracle import Episode

    ep = Episode(first=session.reset(task, mode))
    for turn in turns:
        if session.done:
            break
        ep.turns.append(turn)
        ep.observations.append(session.step(turn))
    return ep, session.evaluate()


def parse_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KIND_GENERATORS]
    if bad or not kinds:
        raise ValueError(f"unknown perturbation kind(s) {bad or kinds}; expected some of {ALL_KINDS}")
    return kinds


def oracle_perturbation_pairs(tasks, mode: str = "solo", kinds: Iterable[str] | str = ALL_KINDS, seed: int = 0,
                              policy: str = "manual", prompt: str = "compact", variants: int = 1,
                              max_tries: int = 20, report: Report | None = None,
                              progress: bool = False) -> list[Pair]:
    """Pairs (oracle conversation, perturbed conversation that tau2's verifier fails) for each task and kind.

    variants: failing variants kept per (task, kind); max_tries: candidates replayed per (task, kind) at most.
    The pairs of one task share prompt and chosen (group = task id). The prompt is the reset observation -
    system prompt and ticket (solo), or system prompt, tau2's fixed greeting and the customer's opening (dual):
    everything before the agent's first own turn. chosen / rejected are the rest of each conversation.
    """
    from envs.tau2_telecom.oracle import oracle_turns
    from envs.tau2_telecom.session import SCORED_TERMINATIONS, TelecomSession
    from envs.tau2_telecom.users import ScriptedUser
    from envs.tau2_telecom.world import MODES, get_world

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    kinds = parse_kinds(kinds)
    report = report if report is not None else Report()
    world = get_world(policy)
    pools = _id_pools(world.new_env().tools.db)
    schemas = {s["function"]["name"]: s["function"].get("parameters", {}) for s in world.tool_schemas("solo")}
    session = TelecomSession(world, user=ScriptedUser() if mode == "dual" else None, prompt=prompt)
    pairs: list[Pair] = []
    tasks = list(tasks)
    if progress:
        from tqdm import tqdm

        tasks = tqdm(tasks, desc=f"tau2 pairs ({mode})", unit="task", file=sys.stderr, disable=None)
    for task in tasks:
        try:
            gold_ep, gold_res = _play(session, task, mode, oracle_turns(task, mode))
        except Exception as e:  # noqa: BLE001 - a task the environment cannot run (e.g. no ticket in solo mode)
            report.skip("task: oracle could not run", f"{task.id}: {type(e).__name__}: {e}")
            continue
        if not gold_res.success:
            report.skip("task: oracle episode not successful", f"{task.id}: reward {gold_res.reward} "
                        f"({gold_res.note or gold_res.termination})")
            continue
        g = _gold(task, mode, world, pools, schemas)
        head = gold_ep.first.messages
        chosen = gold_ep.chat_messages()[len(head):]
        seen = {tuple(g.turns)}  # variants identical to the gold or to another kind's are not new pairs
        for kind in kinds:
            rng = random.Random(f"{seed}:{task.id}:{kind}")
            kept = tried = passed = dups = 0
            for turns in KIND_GENERATORS[kind](g, rng):
                if kept >= variants or tried >= max_tries:
                    break
                if tuple(turns) in seen:
                    dups += 1
                    continue
                seen.add(tuple(turns))
                tried += 1
                report.replayed[kind] += 1
                ep, res = _play(session, task, mode, turns)
                if not session.done or res.termination not in SCORED_TERMINATIONS:
                    # tau2 scores an unfinished or error-ended episode 0 whatever the agent did: not our label
                    report.skip(f"{kind}: episode not ended by a stop", f"{task.id}: {res.termination}")
                    continue
                if res.success:
                    passed += 1
                    report.verifier_passed[kind] += 1
                    continue
                if ep.first.messages != head:
                    report.skip(f"{kind}: prompt differs from the oracle's", task.id)
                    continue
                pairs.append(Pair(prompt=head, chosen=chosen, rejected=ep.chat_messages()[len(head):],
                                  subset=kind, section=TAU2_SECTION, group=task.id, task_id=task.id,
                                  source="oracle_perturbation"))
                report.pairs[kind] += 1
                kept += 1
            if kept == 0:
                if tried == 0:
                    reason = "duplicate of an earlier kind's variant" if dups else "not applicable"
                    report.skip(f"{kind}: {reason}")
                elif passed == tried:
                    report.skip(f"{kind}: verifier passed every variant", f"{task.id} ({passed} tried)")
                else:
                    report.skip(f"{kind}: no usable failing variant", f"{task.id} ({tried} tried)")
    return pairs


# ------------------------------------------------------------------------------------------ rollout pairs
def _greeting() -> str:
    from envs.tau2_telecom import tau2_api as t2

    return t2.DEFAULT_FIRST_AGENT_MESSAGE.content


def prompt_length(messages: list[dict], greeting: str | None = None) -> int:
    """Index of the agent's first own turn: the first assistant message, except tau2's fixed greeting that
    opens a dual-mode conversation (it is part of the reset observation, not generated by the policy)."""
    greeting = _greeting() if greeting is None else greeting
    first = True
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            if not (first and m.get("content") == greeting):
                return i
            first = False
    return len(messages)


def _trajectory_rows(source) -> Iterator[tuple[str, object]]:
    """(where, row) from a trajectories.jsonl path, a run directory, a list of those, or an iterable of row
    dicts. A line that is not JSON comes back as a ValueError in place of the row (reported, not raised)."""
    if isinstance(source, (list, tuple)) and all(isinstance(x, (str, Path)) for x in source):
        for one in source:
            yield from _trajectory_rows(one)
        return
    if not isinstance(source, (str, Path)):
        for i, row in enumerate(source):
            yield f"row {i}", row
        return
    path = Path(source)
    if path.is_dir():
        path = path / "trajectories.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read trajectories: {e}") from None
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:  # e.g. a torn last line after a crash
                yield f"{path}:{lineno}", ValueError(f"invalid JSON: {e.msg}")


def rollout_pairs(source, max_pairs_per_task: int = 12, rejected_per_chosen: int = 3, seed: int = 0,
                  task_ids: Iterable[str] | None = None, report: Report | None = None) -> list[Pair]:
    """Pairs (successful episode, failed episode) of the same task from RunDir.log_trajectories rows.

    Success is tau2's verdict (components["success"]), not the mixed reward. Each successful episode is the
    chosen side of a group (group = "<task id>#<k>") with up to `rejected_per_chosen` failures (3: one best-of-4
    group), at most `max_pairs_per_task` pairs per task. task_ids: keep only these tasks (e.g. a split's ids).
    """
    report = report if report is not None else Report()
    keep_ids = set(task_ids) if task_ids is not None else None
    greeting = None
    episodes: dict[str, dict[bool, list]] = defaultdict(lambda: {True: [], False: []})
    seen: set[str] = set()
    for where, row in _trajectory_rows(source):
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            task_id, messages = row.get("task_id"), row.get("messages")
            if not isinstance(task_id, str):
                raise ValueError("missing or non-string 'task_id'")
            success = (row.get("components") or {}).get("success")
            if not isinstance(success, (int, float)):
                raise ValueError("missing 'components.success' (tau2's verdict)")
            messages = _messages(messages, "messages", "user")
        except ValueError as e:
            report.skip("rollout: malformed row", f"{where}: {e}")
            continue
        if keep_ids is not None and task_id not in keep_ids:
            report.skip("rollout: task not selected")
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in seen:  # the same conversation twice (e.g. greedy evaluation) adds nothing
            report.skip("rollout: duplicate conversation")
            continue
        seen.add(key)
        greeting = _greeting() if greeting is None else greeting
        cut = prompt_length(messages, greeting)
        if cut >= len(messages):
            report.skip("rollout: no agent turn", where)
            continue
        episodes[task_id][bool(success >= 1.0 - 1e-6)].append((messages[:cut], messages[cut:], where))
    pairs: list[Pair] = []
    for task_id in sorted(episodes):
        wins, losses = episodes[task_id][True], episodes[task_id][False]
        if not wins or not losses:
            report.skip("rollout: task without both a success and a failure", task_id)
            continue
        rng = random.Random(f"{seed}:{task_id}")
        rng.shuffle(wins)
        rng.shuffle(losses)
        n_task, j = 0, 0
        for k, (prompt, chosen, _) in enumerate(wins):
            group = f"{task_id}#{k}"
            for _ in range(min(rejected_per_chosen, len(losses))):
                if n_task >= max_pairs_per_task:
                    break
                l_prompt, rejected, where = losses[j % len(losses)]  # cycle, so every failure gets used
                j += 1
                if l_prompt != prompt:  # e.g. an LLM customer opened differently: no shared prompt to score under
                    report.skip("rollout: prompts differ", f"{task_id} ({where})")
                    continue
                pairs.append(Pair(prompt=prompt, chosen=chosen, rejected=rejected, subset="rollout",
                                  section=TAU2_SECTION, group=group, task_id=task_id, source="rollout"))
                report.pairs["rollout"] += 1
                n_task += 1
    return pairs


# ------------------------------------------------------------------------------------------------ TeleQnA
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


def teleqna_pairs(path: str | Path, report: Report | None = None) -> list[Pair]:
    """TeleQnA's official JSON ({"question N": {...}}) -> one pair per distractor; malformed entries are
    skipped with their reason in `report`. An unreadable file or one that is not a JSON object raises."""
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
    pairs = []
    for qid, entry in data.items():
        got, problem = teleqna_entry_pairs(qid, entry)
        if problem:
            category, detail = problem
            report.skip(f"teleqna: {category}", f"{path.name}: {qid!r}: {detail}")
            continue
        for p in got:
            report.pairs[p.subset] += 1
        pairs += got
    return pairs


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True)
    t = sub.add_parser("tau2", help="oracle conversations vs verifier-failed perturbations")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="one of tau2's telecom splits (small, train, test, base, full)")
    src.add_argument("--tasks", metavar="FILE", help="a tau2 task file (JSON)")
    t.add_argument("--mode", choices=("solo", "dual"), default="solo")
    t.add_argument("--kinds", default=",".join(ALL_KINDS), help=f"comma-separated subset of {','.join(ALL_KINDS)}")
    t.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--policy", choices=("manual", "workflow"), default="manual")
    t.add_argument("--prompt", choices=("compact", "full"), default="compact")
    t.add_argument("--variants", type=int, default=1, help="failing variants kept per task and kind")
    r = sub.add_parser("rollouts", help="successful vs failed episodes of the same task from runs")
    r.add_argument("paths", nargs="+", help="trajectories.jsonl files or run directories")
    r.add_argument("--max-pairs-per-task", type=int, default=12)
    r.add_argument("--rejected-per-chosen", type=int, default=3)
    r.add_argument("--split", default=None, help="keep only tasks of this tau2 split")
    r.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("teleqna", help="TeleQnA: correct option vs each distractor")
    q.add_argument("path", help="TeleQnA JSON (e.g. ../shared/datasets/teleqna/sample.json)")
    for p in (t, r, q):
        p.add_argument("--out", required=True, help="pair JSONL to write")
    args = ap.parse_args(argv)

    report, t0 = Report(), time.perf_counter()
    try:
        if args.source == "tau2":
            from envs.tau2_telecom.tasks import (
                TaskFileError,
                load_split,
                load_task_file,
            )

            try:
                if args.split:
                    tasks = load_split(args.split)
                else:
                    loaded = load_task_file(args.tasks)
                    tasks = loaded.tasks
                    for problem in loaded.problems:
                        report.skip("task: unloadable", problem)
            except TaskFileError as e:
                raise ValueError(str(e)) from None
            tasks = tasks[: args.limit] if args.limit else tasks
            pairs = oracle_perturbation_pairs(tasks, mode=args.mode, kinds=args.kinds, seed=args.seed,
                                              policy=args.policy, prompt=args.prompt, variants=args.variants,
                                              report=report, progress=True)
            print(f"tasks: {len(tasks)}  groups: {len({p.group for p in pairs})}")
        elif args.source == "rollouts":
            ids = None
            if args.split:
                from envs.tau2_telecom.tasks import split_ids

                ids = split_ids(args.split)
            pairs = rollout_pairs(args.paths, args.max_pairs_per_task, args.rejected_per_chosen, args.seed, ids, report)
        else:
            pairs = teleqna_pairs(args.path, report)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_pairs(args.out, pairs)
    print("\n".join(report.lines()))
    print(f"wrote {len(pairs)} pairs to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0 if pairs else 1


if __name__ == "__main__":
    sys.exit(main())
