"""tau2 oracle perturbations: a task's gold conversation (chosen) against the same conversation with one
controlled perturbation of its agent turns (rejected), replayed through a fresh session so that tau2's verifier,
not this code, decides that the perturbed episode fails.
"""
from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rl.rm.pairs.format import TAU2_SECTION, Pair
from rl.rm.pairs.report import Report

ALL_KINDS = ("missing_action", "wrong_argument", "premature_transfer", "no_resolution", "wrong_order",
             "extra_harmful_action")

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
        raise RuntimeError("oracle_turns no longer renders one turn per gold action; "
                           "update rl/rm/pairs/perturbations.py")
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
