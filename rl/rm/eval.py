"""RewardBench-style evaluation of a reward model or an LLM judge on preference pairs (rl/rm/pairs JSONL).

    python -m rl.rm.eval --pairs test.jsonl --rm runs/rm/model --out runs/rm/eval
    python -m rl.rm.eval --pairs test.jsonl --judge-model openai/Qwen3-4B \\
        --judge-base-url http://127.0.0.1:8000/v1 --out DIR
    python -m rl.rm.eval --pairs test.jsonl --judge-vllm smollm2-135m --both-orders [--judge-verdict logprob] --out DIR

Scoring, as in RewardBench (v1 for pairwise, v2 for best-of-4):
* pairwise accuracy per subset: a scalar RM gets 1 when score(chosen) > score(rejected) - a TIE IS WRONG - else 0;
  a judge gets its preference for the chosen side (1 / 0, 0.5 for an unparseable verdict, the mean of both orders
  with --both-orders). A section's score is the mean of its subsets weighted by their number of pairs; "overall"
  is the unweighted mean of the section scores (RewardBench's headline number), and "all_pairs" the plain mean
  over every pair.
* best-of-4: a group (pairs sharing `group`, prompt and chosen) with >= 3 distinct rejected sides is one item:
  the chosen side against 3 rejected ones (a seeded choice of 3 when there are more). A scalar RM earns 1 if the
  chosen score is strictly above all three, 1/(k+1) if it ties for the top with k rejected, else 0. A judge only
  compares two sides at a time, so its credit is the product of its three chosen-vs-rejected preferences (the
  chance of winning all three if the verdicts were independent; an unparseable verdict counts 0.5).
  The groups of tau2 oracle perturbations mix perturbation kinds, so best-of-4 is reported per section and
  overall, and per subset only for the groups whose three rejected sides all belong to that subset.
Every distinct conversation is scored once (a group's chosen side is shared by all its pairs), every distinct
pair judged once.
* surface-matched pairs: the same accuracy over the pairs whose two sides look alike on the surface - as many turns
  of each role, as many tool calls, and text lengths within 10 % (a wrong argument, a right action on the wrong line,
  a wrong order). A score that learned "fewer turns" or "no transfer" passes most pairs but none of these, so a gap
  between "overall" and this line says how much of the accuracy is the surface.

On-policy audit (`--rollouts RUN_DIR ...`, with or without --pairs): the episodes of runs' trajectories.jsonl
(or of rl.evaluate --model folders' episodes.jsonl, such as rl.rft's sample<r>/: one step, tau2's reward as checks),
scored by --rm (or, without --rm, by the rm / judge scores the run logged), against tau2's verdict on the same
episodes: pairwise accuracy over (passed, failed) episodes of one task and step, best-of-group, Spearman with the
checks score, within-group spread (rl/reward_audit.py; rl.train logs the same numbers every step).

Output in --out: report.json, report.md (section | subset | n | pairwise acc | best-of-4), report.png; with
--rollouts, report.json's "on_policy" and a table in report.md.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

CHANCE = 0.5  # pairwise accuracy of a coin flip


# ------------------------------------------------------------------------------------------- pure arithmetic
def _conv_key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def _aggregate(items: list[tuple[str, str | None, float]]) -> dict:
    """(section, subset or None, value) -> {"sections": {sec: {"n", "accuracy", "subsets": {sub: {"n",
    "accuracy"}}}}, "overall": {"n", "accuracy" (mean of sections), "all_pairs" (mean of items)}}. An item with
    subset None counts for its section and overall only."""
    by_sub: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_sec: dict[str, list[float]] = defaultdict(list)
    for section, subset, value in items:
        by_sec[section].append(value)
        if subset is not None:
            by_sub[section][subset].append(value)
    sections = {}
    for section in sorted(by_sec):
        subsets = {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(by_sub[section].items())}
        # RewardBench: a section's score is its subsets' scores weighted by example count. Items outside any
        # subset (best-of-4 groups of mixed kinds) weigh in as their own part.
        parts = [(d["n"], d["accuracy"]) for d in subsets.values()]
        loose = [v for (sec, sub, v) in items if sec == section and sub is None]
        if loose:
            parts.append((len(loose), sum(loose) / len(loose)))
        n = sum(k for k, _ in parts)
        sections[section] = {"n": n, "accuracy": sum(k * a for k, a in parts) / n, "subsets": subsets}
    values = [v for _, _, v in items]
    overall = {"n": len(values),
               "accuracy": sum(s["accuracy"] for s in sections.values()) / len(sections) if sections else None,
               "all_pairs": sum(values) / len(values) if values else None}
    return {"sections": sections, "overall": overall}


def pairwise_accuracy(pairs: list, values: list[float]) -> dict:
    """Per-subset / per-section / overall accuracy from each pair's chosen-preference value in [0, 1]."""
    if len(pairs) != len(values):
        raise ValueError(f"pairwise_accuracy: {len(pairs)} pairs but {len(values)} values")
    return _aggregate([(p.section, p.subset, float(v)) for p, v in zip(pairs, values)])


def _surface(messages: list[dict]) -> tuple[dict, int, int]:
    """Turns per role, tool calls (OpenAI `tool_calls` or tagged in the text), characters of text."""
    roles: dict = defaultdict(int)
    calls = chars = 0
    for m in messages:
        roles[m.get("role")] += 1
        text = m.get("content") or ""
        calls += len(m.get("tool_calls") or []) + text.count("<tool_call>")
        chars += len(text)
    return dict(roles), calls, chars


def surface_matched(pair, length_tolerance: float = 0.1) -> bool:
    """The two sides have as many turns of each role and tool calls, and text lengths within the tolerance."""
    (roles_c, calls_c, chars_c), (roles_r, calls_r, chars_r) = _surface(pair.chosen), _surface(pair.rejected)
    return roles_c == roles_r and calls_c == calls_r and abs(chars_c - chars_r) <= length_tolerance * max(
        chars_c, chars_r, 1)


def surface_matched_accuracy(pairs: list, values: list[float]) -> dict:
    """pairwise_accuracy over the surface-matched pairs only (empty sections when there are none)."""
    kept = [(p, v) for p, v in zip(pairs, values) if surface_matched(p)]
    return _aggregate([(p.section, p.subset, float(v)) for p, v in kept])


def scalar_preferences(chosen: list[float], rejected: list[float]) -> list[float]:
    """A scalar RM's pairwise value: 1 if strictly higher, else 0 (a tie is wrong)."""
    return [1.0 if c > r else 0.0 for c, r in zip(chosen, rejected)]


def best_of_4_groups(pairs: list, seed: int = 0) -> list[list[int]]:
    """Indices of 3 pairs (same group, prompt and chosen; distinct rejected) for every group that has >= 3;
    with more than 3 a seeded choice (per group, so independent of the other groups), kept in file order."""
    groups: dict[tuple, list[int]] = {}
    seen_rejected: dict[tuple, set] = defaultdict(set)
    for i, p in enumerate(pairs):
        key = (p.group, _conv_key(p.prompt), _conv_key(p.chosen))
        rej = _conv_key(p.rejected)
        if rej in seen_rejected[key]:
            continue
        seen_rejected[key].add(rej)
        groups.setdefault(key, []).append(i)
    out = []
    for key, idx in groups.items():
        if len(idx) < 3:
            continue
        if len(idx) > 3:
            idx = sorted(random.Random(f"{seed}:{key[0]}").sample(idx, 3))
        out.append(idx)
    return out


def scalar_best_of_4_credit(chosen: float, rejected: list[float]) -> float:
    """1 if chosen strictly tops every rejected score; tied at the top with k of them: 1/(k+1); else 0."""
    if any(r > chosen for r in rejected):
        return 0.0
    return 1.0 / (1 + sum(r == chosen for r in rejected))


def judge_best_of_4_credit(preferences: list[float]) -> float:
    """A pairwise judge must prefer the chosen side in all three comparisons: the product of its preferences."""
    credit = 1.0
    for p in preferences:
        credit *= p
    return credit


def best_of_4(pairs: list, groups: list[list[int]], credits: list[float]) -> dict:
    """Aggregate per-group credits like pairwise_accuracy (n = groups); a group counts for a subset only when
    its three rejected sides all belong to it."""
    items = []
    for idx, credit in zip(groups, credits):
        subsets = {pairs[i].subset for i in idx}
        items.append((pairs[idx[0]].section, subsets.pop() if len(subsets) == 1 else None, float(credit)))
    return _aggregate(items)


# -------------------------------------------------------------------------------------------- evaluators
def _chunks(n: int, size: int, desc: str, progress: bool):
    starts = range(0, n, size)
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, unit="item", file=sys.stderr)
        for s in starts:
            yield s
            bar.update(min(size, n - s))
        bar.close()
    else:
        yield from starts


def _header(kind: str, identity: dict, pairs: list, seed: int) -> dict:
    return {"kind": kind, **identity, "seed": seed, "n_pairs": len(pairs),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def evaluate_rm(pairs: list, scorer, seed: int = 0, chunk: int = 32, progress: bool = False) -> dict:
    """Report for a scalar reward model (`scorer.score(conversations) -> floats`, e.g. rl.rm.model's
    RewardModelScorer): each distinct prompt+side conversation is scored once."""
    if not pairs:
        raise ValueError("evaluate_rm: no pairs to evaluate")
    convs: dict[str, list[dict]] = {}
    for p in pairs:
        for side in (p.chosen, p.rejected):
            convs.setdefault(_conv_key(p.prompt + side), p.prompt + side)
    keys = list(convs)
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in _chunks(len(keys), chunk, "scoring", progress):
        batch = keys[s:s + chunk]
        for k, v in zip(batch, scorer.score([convs[k] for k in batch])):
            scores[k] = float(v)
    chosen = [scores[_conv_key(p.prompt + p.chosen)] for p in pairs]
    rejected = [scores[_conv_key(p.prompt + p.rejected)] for p in pairs]
    groups = best_of_4_groups(pairs, seed)
    credits = [scalar_best_of_4_credit(chosen[g[0]], [rejected[i] for i in g]) for g in groups]
    report = _header("reward_model", {"model": str(getattr(scorer, "path", type(scorer).__name__))}, pairs, seed)
    values = scalar_preferences(chosen, rejected)
    report.update(conversations_scored=len(keys), seconds=time.perf_counter() - t0,
                  pairwise=pairwise_accuracy(pairs, values), surface_matched=surface_matched_accuracy(pairs, values),
                  best_of_4=best_of_4(pairs, groups, credits),
                  mean_margin=sum(c - r for c, r in zip(chosen, rejected)) / len(pairs))
    return report


def evaluate_judge(pairs: list, judge, seed: int = 0, chunk: int = 16, progress: bool = False) -> dict:
    """Report for a pairwise judge (rl.rm.judges.PairwiseJudge): each distinct pair is judged once."""
    if not pairs:
        raise ValueError("evaluate_judge: no pairs to evaluate")
    unique: dict[str, int] = {}
    for i, p in enumerate(pairs):
        unique.setdefault(_conv_key([p.prompt, p.chosen, p.rejected]), i)
    keys = list(unique)
    prefs: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in _chunks(len(keys), chunk, "judging", progress):
        batch = keys[s:s + chunk]
        for k, v in zip(batch, judge.prefer([pairs[unique[k]] for k in batch])):
            prefs[k] = float(v)
    values = [prefs[_conv_key([p.prompt, p.chosen, p.rejected])] for p in pairs]
    groups = best_of_4_groups(pairs, seed)
    credits = [judge_best_of_4_credit([values[i] for i in g]) for g in groups]
    identity = {"model": getattr(judge, "name", type(judge).__name__),
                "judge": {"both_orders": getattr(judge, "both_orders", None),
                          "verdict": getattr(judge, "verdict", None), "order_seed": getattr(judge, "seed", None),
                          **dict(getattr(judge, "stats", {}))}}
    report = _header("judge", identity, pairs, seed)
    report.update(pairs_judged=len(keys), seconds=time.perf_counter() - t0,
                  pairwise=pairwise_accuracy(pairs, values), surface_matched=surface_matched_accuracy(pairs, values),
                  best_of_4=best_of_4(pairs, groups, credits))
    return report


# ----------------------------------------------------------------------------------------------- outputs
def _fmt(x: float | None) -> str:
    return "-" if x is None else str(x) if isinstance(x, int) else f"{x:.3f}"  # counts as counts


def markdown_table(report: dict) -> str:
    pw, bo = report["pairwise"], report["best_of_4"]

    def bo4(d: dict | None) -> str:
        return "-" if not d else f"{_fmt(d['accuracy'])} (n={d['n']})"

    rows = ["| section | subset | n | pairwise acc | best-of-4 |", "|---|---|---|---|---|"]
    for section, sec in pw["sections"].items():
        bsec = bo["sections"].get(section)
        for subset, sub in sec["subsets"].items():
            bsub = bsec["subsets"].get(subset) if bsec else None
            rows.append(f"| {section} | {subset} | {sub['n']} | {_fmt(sub['accuracy'])} | {bo4(bsub)} |")
        rows.append(f"| {section} | *all* | {sec['n']} | {_fmt(sec['accuracy'])} | {bo4(bsec)} |")
    ov = pw["overall"]
    rows.append(f"| overall | *mean of sections* | {ov['n']} | {_fmt(ov['accuracy'])} | "
                f"{bo4(bo['overall'] if bo['overall']['n'] else None)} |")
    matched = report.get("surface_matched")  # reports written before it have none
    if matched and matched["overall"]["n"]:
        rows.append(f"| surface-matched | *same turns, calls, length ±10 %; all pairs* | {matched['overall']['n']} | "
                    f"{_fmt(matched['overall']['all_pairs'])} | - |")
    return "\n".join(rows) + "\n"


def plot_report(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (section, sec) in enumerate(report["pairwise"]["sections"].items()):
        for subset, sub in sec["subsets"].items():
            labels.append(f"{section}\n{subset}\n(n={sub['n']})")
            values.append(sub["accuracy"])
            colors.append(palette[j % len(palette)])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.5))
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(CHANCE, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(f"{report['kind']}: {report['model']}  (overall {_fmt(report['pairwise']['overall']['accuracy'])})",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _judge_line(judge: dict | None) -> str:
    """What a judge's verdicts were made of: how many were unparseable, how often the side shown first won, and how
    many pairs (asked in both orders) got the same letter twice, i.e. were decided by position alone."""
    if not judge or "chose_a" not in judge:
        return ""
    line = (f"{judge['judgments']} verdicts ({judge.get('verdict') or 'text'}): {judge['unparseable']} unparseable, "
            f"{judge['chose_a']} for the side shown first (A)")
    if judge.get("both_orders"):
        line += f", {judge['position_only']} pairs given the same letter in both orders (decided by position alone)"
    return line + "\n\n"


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(f"# {report['kind']} evaluation: {report['model']}\n\n"
                           f"seed {report['seed']}, {report['n_pairs']} pairs, {report['timestamp']}\n\n"
                           + _judge_line(report.get("judge")) + markdown_table(report))
    plot_report(report, paths["png"])
    return paths


# ---------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from rl.rm.judges import JUDGE_VERDICTS  # the module imports nothing heavy at its top

    p = argparse.ArgumentParser(prog="python -m rl.rm.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", action="append", default=[], metavar="FILE", help="pair JSONL (repeatable)")
    p.add_argument("--rollouts", action="append", default=[], metavar="RUN_DIR",
                   help="audit on a run's own episodes (its trajectories.jsonl; repeatable)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--rm", metavar="PATH", help="trained reward model folder (python -m rl.rm.train)")
    who.add_argument("--judge-model", metavar="M", help="litellm model name of an OpenAI-compatible judge")
    who.add_argument("--judge-vllm", metavar="MODEL", help="local judge model: a folder, 'tiny' or 'smollm2-135m'")
    p.add_argument("--judge-base-url", metavar="U", default="", help="endpoint for --judge-model")
    p.add_argument("--judge-api-key", default="EMPTY")
    p.add_argument("--judge-max-tokens", type=int, default=256)
    p.add_argument("--judge-num-cpus", type=float, default=1, help="CPUs of the --judge-vllm actor")
    p.add_argument("--judge-max-model-len", type=int, default=None, help="--judge-vllm context (model's default)")
    p.add_argument("--both-orders", action="store_true", help="judges: ask in both A/B orders and average")
    p.add_argument("--judge-verdict", choices=JUDGE_VERDICTS, default="text",
                   help="--judge-vllm: parse the judge's written [[A]]/[[B]] (text), or start its reply with [[ and "
                        "take the likelier of A and B as the next token (logprob: for small models)")
    p.add_argument("--seed", type=int, default=0, help="A/B order, best-of-4 choice and the --audit-tasks draw")
    p.add_argument("--audit-tasks", type=int, default=None, metavar="N",
                   help="--rollouts: audit a random draw of N tasks with both a passed and a failed episode")
    p.add_argument("--audit-per-outcome", type=int, default=None, metavar="K",
                   help="--rollouts: at most K passed and K failed episodes of each task")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N pairs")
    p.add_argument("--batch-size", type=int, default=8, help="--rm scoring batch")
    p.add_argument("--out", required=True, metavar="DIR")
    return p


def _judge_and_close(args) -> tuple[object, Callable[[], None]]:
    from rl.rm.judges import LiteLLMChat, PairwiseJudge, VLLMChat

    if args.judge_model:
        from envs.tau2_telecom.endpoint import LLMEndpoint

        client = LiteLLMChat(LLMEndpoint(model=args.judge_model, base_url=args.judge_base_url,
                                         api_key=args.judge_api_key, temperature=0.0,
                                         max_tokens=args.judge_max_tokens))
        return PairwiseJudge(client, seed=args.seed, both_orders=args.both_orders), lambda: None  # text verdicts
    import ray

    from rl.models import resolve_model
    from rl.runtime import init_ray

    init_ray(None, max(1, int(args.judge_num_cpus + 0.999)), log_to_driver=False)
    try:
        client = VLLMChat(str(resolve_model(args.judge_vllm)), num_cpus=args.judge_num_cpus,
                          max_model_len=args.judge_max_model_len, max_tokens=args.judge_max_tokens, seed=args.seed)
    except BaseException:
        ray.shutdown()
        raise

    def close():
        try:
            client.close()
        finally:
            ray.shutdown()

    return PairwiseJudge(client, seed=args.seed, both_orders=args.both_orders, verdict=args.judge_verdict), close


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.pairs and not args.rollouts:
        parser.error("give --pairs FILE and/or --rollouts RUN_DIR")
    if args.pairs and not (args.rm or args.judge_model or args.judge_vllm):
        parser.error("--pairs needs a scorer: --rm, --judge-model or --judge-vllm")
    if args.rollouts and (args.judge_model or args.judge_vllm):
        parser.error("--rollouts audits a reward model (--rm) or the scores the run logged, not a pairwise judge")
    if args.both_orders and args.rm:
        parser.error("--both-orders applies to judges (--judge-model / --judge-vllm), not to --rm")
    if args.judge_verdict == "logprob" and not args.judge_vllm:
        parser.error("--judge-verdict logprob needs --judge-vllm (a local engine that reports next-token logprobs)")
    if args.judge_base_url and not args.judge_model:
        parser.error("--judge-base-url needs --judge-model")
    if any(v is not None and v < 1 for v in (args.audit_tasks, args.audit_per_outcome)):
        parser.error("--audit-tasks and --audit-per-outcome must be >= 1")
    if (args.audit_tasks or args.audit_per_outcome) and not args.rollouts:
        parser.error("--audit-tasks / --audit-per-outcome choose among --rollouts episodes")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not args.pairs:
        return _audit_only(args)
    from rl.rm.pairs.format import read_pairs

    pairs = []
    try:
        for f in args.pairs:
            pairs += read_pairs(f)
    except ValueError as e:  # PairFileError names file:line and the field
        print(f"rm_eval: error: {e}", file=sys.stderr)
        return 2
    pairs = pairs[: args.limit] if args.limit else pairs
    if not pairs:
        print(f"rm_eval: error: no pairs in {', '.join(args.pairs)}", file=sys.stderr)
        return 2
    scorer = None
    if args.rm:
        try:
            scorer = _rm_scorer(args)
        except FileNotFoundError as e:
            print(f"rm_eval: error: {e}", file=sys.stderr)
            return 2
        report = evaluate_rm(pairs, scorer, seed=args.seed, progress=True)
    else:
        judge, close = _judge_and_close(args)
        try:
            report = evaluate_judge(pairs, judge, seed=args.seed, progress=True)
        finally:
            close()
    report["pairs_files"] = [str(f) for f in args.pairs]
    report["limit"] = args.limit
    if args.rollouts:
        try:
            report["on_policy"] = audit_rollouts(args.rollouts, scorer, batch=args.batch_size, tasks=args.audit_tasks,
                                                 per_outcome=args.audit_per_outcome, seed=args.seed)
        except (FileNotFoundError, ValueError) as e:
            print(f"rm_eval: error: {e}", file=sys.stderr)
            return 2
    paths = write_report(report, args.out)
    print(markdown_table(report), end="")
    if "on_policy" in report:
        with open(paths["md"], "a") as fh:
            fh.write(audit_table(report["on_policy"]))
        print(audit_table(report["on_policy"]), end="")
    print(f"report: {paths['json']}  {paths['md']}  {paths['png']}")
    return 0


def _rm_scorer(args):
    from rl.rm.model import RewardModelScorer

    return RewardModelScorer(args.rm, batch_size=args.batch_size)


def _audit_only(args) -> int:
    try:
        audit = audit_rollouts(args.rollouts, _rm_scorer(args) if args.rm else None, batch=args.batch_size,
                               tasks=args.audit_tasks, per_outcome=args.audit_per_outcome, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"rm_eval: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"on_policy": audit}, indent=2) + "\n")
    (out / "report.md").write_text(audit_table(audit))
    print(audit_table(audit), end="")
    print(f"report: {out / 'report.json'}  {out / 'report.md'}")
    return 0


# ------------------------------------------------------------------------------------------ on-policy audit
def _audited_episodes(d: str) -> list[tuple[int, object, list[dict], dict, str | None]]:
    """(step, group, messages, components, termination) of each episode of a run's trajectories.jsonl, or of an
    rl.evaluate --model folder's episodes.jsonl (an rl.rft sampling round: one step, a group per task, tau2's reward
    as checks)."""
    from rl.contracts import EpisodeRecord
    from rl.run_dir import episode_file, read_jsonl

    path = episode_file(d, "--rollouts")
    out = []
    for line, row in enumerate(read_jsonl(path), 1):
        if "trial" not in row:
            r = EpisodeRecord.from_row(row)
            out.append((r.step, r.group, r.messages, dict(r.components), r.termination))
        elif isinstance(row.get("chat_messages"), list) and row["chat_messages"]:  # what the reward actor scores
            out.append((0, row["task_id"], row["chat_messages"],
                        {"success": float(row["success"]), "tau2": float(row["reward"])}, row.get("termination")))
        else:
            raise ValueError(f"{path}:{line}: no chat_messages to score (only rl.evaluate --model episodes keep the "
                             "policy's conversation)")
    return out


def audit_rollouts(run_dirs: list[str], scorer=None, batch: int = 8, tasks: int | None = None,
                   per_outcome: int | None = None, seed: int = 0) -> dict:
    """The on-policy audit (rl/reward_audit.py) over the episodes of runs' trajectories.jsonl or rl.evaluate
    folders' episodes.jsonl: with `scorer`, its scores replace the logged `rm` component (the audit is rank-based,
    so raw scores do). A group is one task's episodes of one step of one run. Overall, and per step.
    `tasks` / `per_outcome`: audit only a seeded draw of that many groups with both a passed and a failed episode,
    and at most that many passed and failed episodes of each (what a large scorer on a CPU can afford)."""
    from rl.reward_audit import audit_step

    records = [(str(d), step, group, messages, components, ending) for d in run_dirs
               for step, group, messages, components, ending in _audited_episodes(d)]
    if tasks or per_outcome:
        records = _audit_draw(records, tasks, per_outcome, seed)
    if not records:
        raise ValueError(f"--rollouts {', '.join(run_dirs)}: no episodes")
    components = [r[4] for r in records]
    if scorer is not None:
        for s in _chunks(len(records), batch, "scoring episodes", True):
            for c, v in zip(components[s:s + batch], scorer.score([r[3] for r in records[s:s + batch]])):
                c["rm"] = float(v)
    if not any(k in c for c in components for k in ("rm", "judge")):
        raise ValueError("--rollouts: the runs logged no rm or judge score; give --rm PATH to score their episodes")
    groups = [(d, step, group) for d, step, group, _, _, _ in records]
    verdicts = [bool(c.get("success", 0.0)) for c in components]
    endings = [r[5] for r in records]
    steps = sorted({r[1] for r in records})
    per_step = {}
    for step in steps:
        idx = [i for i, r in enumerate(records) if r[1] == step]
        per_step[str(step)] = audit_step([groups[i] for i in idx], [verdicts[i] for i in idx],
                                         [components[i] for i in idx], [endings[i] for i in idx])
    return {"runs": list(run_dirs), "episodes": len(records), "passed": sum(verdicts),
            "scored_by": str(getattr(scorer, "path", "rm")) if scorer is not None else "the runs' logged scores",
            "overall": audit_step(groups, verdicts, components, endings), "per_step": per_step,
            "ending_baseline": _ending_baseline(groups, verdicts, components, endings)}


def _ending_baseline(groups: list, verdicts: list[bool], components: list[dict], endings: list) -> dict:
    """The same statistics for a score that only asks "did the agent stop, rather than crash or run out of turns?"
    (1 / 0): what a reward model must beat to have learned more than how an episode ended ({} if endings are
    unknown)."""
    from rl.reward_audit import audit_component, checks_scores

    if any(e is None for e in endings):
        return {}
    stopped = [float(e == "agent_stop") for e in endings]
    return audit_component(groups, verdicts, checks_scores(components), stopped, endings)


def _audit_draw(records: list[tuple], tasks: int | None, per_outcome: int | None, seed: int) -> list[tuple]:
    """A seeded draw of `tasks` groups (run, step, task) that hold both outcomes, at most `per_outcome` passed and
    failed episodes of each (the first in the file), in file order."""
    by_group: dict = defaultdict(lambda: {True: [], False: []})
    for i, r in enumerate(records):
        by_group[r[:3]][bool(r[4].get("success", 0.0))].append(i)
    mixed = sorted((g for g, v in by_group.items() if v[True] and v[False]), key=str)
    drawn = random.Random(seed).sample(mixed, min(tasks, len(mixed))) if tasks else mixed
    keep = sorted(i for g in drawn for ok in (True, False) for i in by_group[g][ok][:per_outcome or None])
    print(f"rm_eval: auditing {len(keep)} episodes of {len(drawn)} of the {len(mixed)} tasks with both a passed and "
          f"a failed episode (seed {seed})", file=sys.stderr)
    return [records[i] for i in keep]


def audit_table(audit: dict) -> str:
    """Overall, then the first and the last step (one step, as in an rl.rft sampling round: overall alone)."""
    steps = list(audit["per_step"])
    shown = [steps[0], steps[-1]] if len(steps) > 1 else []
    baseline = audit.get("ending_baseline") or {}
    extra = " did-it-stop baseline |" if baseline else ""
    lines = ["", f"On-policy audit: {audit['episodes']} episodes of {', '.join(audit['runs'])} ({audit['passed']} "
             f"passed tau2), scored by {audit['scored_by']}", "",
             "| statistic | all steps |" + "".join(f" step {s} |" for s in shown) + extra,
             "|---|---|" + "---|" * (len(shown) + bool(baseline))]
    for key, value in audit["overall"].items():
        lines.append(f"| {key.removeprefix('reward/')} | {_fmt(value)} |"
                     + "".join(f" {_fmt(audit['per_step'][s].get(key))} |" for s in shown)
                     + (f" {_fmt(baseline.get(key.rsplit('/', 1)[-1]))} |" if baseline else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
