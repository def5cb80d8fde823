"""rl.rft --select reward (rl/rft_selection.py): which sampled episodes a round imitates under each reward mixing,
and what it records of them."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from rl.config import RewardConfig, load_config
from rl.rft_selection import (
    SampledEpisode,
    check_reward_section,
    episode_rewards,
    read_samples,
    select_by_reward,
    selection_summary,
    top_per_task,
)
from tests.conftest import REPO_ROOT


def _episode(task, success, text):
    return SampledEpisode(task, success, float(success), [{"role": "assistant", "content": text}])


# task a: one pass among three samples; task b: none passes
EPISODES = [_episode("a", False, "a0"), _episode("a", True, "a1"), _episode("a", False, "a2"),
            _episode("b", False, "b0"), _episode("b", False, "b1")]
RM = [0.9, 0.2, 0.5, 0.3, 0.8]  # prefers a failure on task a


def _chosen(w, min_reward=None, per_task=1, episodes=EPISODES, rm=RM):
    rewards = episode_rewards(episodes, w, rm)
    return [episodes[i].chat[0]["content"] for i in top_per_task(episodes, rewards, per_task, min_reward)]


def test_each_mixing_chooses_what_its_reward_ranks_first():
    rm_only = RewardConfig(task_weight=0.0, rm_path="rm", rm_weight=1.0)
    assert _chosen(rm_only) == ["a0", "b1"]  # the reward model alone picks its favourite failure on task a
    gated = RewardConfig(task_weight=1.0, rm_path="rm", rm_weight=0.5, mixing="gated")
    assert _chosen(gated, min_reward=1.0) == ["a1"]  # tau2's pass outranks any score; the floor drops task b
    weighted = RewardConfig(task_weight=1.0, rm_path="rm", rm_weight=0.5)
    assert _chosen(weighted) == ["a1", "b1"]  # no floor: task b gets the reward model's favourite failure
    assert _chosen(weighted, per_task=2) == ["a1", "a0", "b1", "b0"]
    checks = RewardConfig(task_weight=1.0)
    assert _chosen(checks, min_reward=1.0, per_task=2) == ["a1"]  # the verifier's choice: passes only


def test_multiplicative_mixing_selects_what_gated_does_on_pass_fail_checks():
    """Why bench_selection has no multiplicative arm: with tau2's 0/1 reward as the checks, checks x (1 - w + w x rm)
    is 0 for every failure and rises with the reward model among the passes, so with a floor it keeps what gated
    keeps; without one, a task with no pass gets its first-sampled failure, not the reward model's favourite."""
    episodes = [_episode("a", True, "a0"), _episode("a", False, "a1"), _episode("a", True, "a2"),
                _episode("b", False, "b0"), _episode("b", False, "b1")]
    rm = [0.2, 0.9, 0.7, 0.3, 0.8]

    def chosen(w, min_reward):
        return _chosen(w, min_reward, episodes=episodes, rm=rm)

    gated = RewardConfig(task_weight=1.0, rm_path="rm", rm_weight=0.5, mixing="gated")
    multiplicative = replace(gated, mixing="multiplicative")
    assert chosen(gated, 1.0) == chosen(multiplicative, 0.5) == ["a2"]  # the pass the reward model prefers
    assert chosen(multiplicative, None) == ["a2", "b0"]
    assert chosen(replace(gated, mixing="weighted"), None) == ["a2", "b1"]


def test_equal_rewards_keep_sampling_order_and_a_repeated_conversation_counts_once():
    episodes = [_episode("a", True, "same"), _episode("a", True, "same"), _episode("a", True, "other")]
    assert top_per_task(episodes, [1.0, 1.0, 1.0], 2, None) == [0, 2]


def test_the_summary_shows_a_reward_model_that_prefers_failures():
    rewards = episode_rewards(EPISODES, RewardConfig(task_weight=0.0, rm_path="rm", rm_weight=1.0), RM)
    record = selection_summary(EPISODES, rewards, [0, 4], RM)
    assert record["chosen"] == 2 and record["chosen_passing"] == 0 and record["tasks_chosen_without_a_pass"] == 1
    audit = record["rm_vs_verifier"]
    assert audit["pairwise_acc"] == 0.0 and audit["best_of_group"] == 0.0  # a1 is scored below a0 and a2
    assert "rm_vs_verifier" not in selection_summary(EPISODES, rewards, [1], [None] * 5)


def test_the_audit_splits_out_the_pairs_that_ended_alike():
    """A reward model can rank a pass above a failure that crashed without judging the task: the audit reports the
    pairs whose two episodes ended the same way on their own (episodes without a recorded ending join none)."""
    endings = ["too_many_errors", "agent_stop", "agent_stop", None, None]
    episodes = [replace(e, termination=end) for e, end in zip(EPISODES, endings)]
    rm = [0.1, 0.5, 0.9, 0.3, 0.8]  # a1 (pass) above the crashed a0, below a2, which also stopped
    audit = selection_summary(episodes, [0.0] * 5, [], rm)["rm_vs_verifier"]
    assert (audit["pairwise_acc"], audit["pairs"]) == (0.5, 2)
    assert (audit["pairwise_acc_same_ending"], audit["pairs_same_ending"]) == (0.0, 1)


def test_keys_the_episode_files_cannot_supply_are_named():
    cfg = load_config(f"{REPO_ROOT}/configs/learn_tiny.yaml")  # partial credit and a format penalty
    with pytest.raises(ValueError, match=r"reward.env_assertion_weight=0.25, reward.action_weight=0.25, "
                                         r"reward.malformed_call_penalty=0.05"):
        check_reward_section(cfg.reward)
    with pytest.raises(ValueError, match="scores every episode alike"):
        check_reward_section(RewardConfig(task_weight=0.0))
    check_reward_section(replace(cfg.reward, env_assertion_weight=0.0, action_weight=0.0, malformed_call_penalty=0.0))


def test_a_broken_episode_line_is_named(tmp_path):
    (tmp_path / "episodes.jsonl").write_text('{"task_id": "a", "success": true}\n')
    with pytest.raises(ValueError, match=r"episodes.jsonl:1: not an rl.evaluate --model episode"):
        read_samples(tmp_path)


def test_the_reward_model_scores_the_samples_it_selects_from(tmp_path, untrained_rm):
    """Through the real scorer: rm_only picks each task's top-scored episode, held-out tasks are never read."""
    from rl.rm.model import RewardModelScorer

    rows = [{"task_id": e.task_id, "success": e.success, "reward": e.tau2_reward, "messages": [],  # tau2's log
             "chat_messages": e.chat, "termination": "agent_stop"} for e in EPISODES]
    rows.append({**rows[0], "task_id": "held-out"})
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = RewardConfig(task_weight=0.0, rm_path=untrained_rm, rm_weight=1.0)
    chosen, record = select_by_reward(w, [tmp_path], 1, None, {"a", "b"})
    raw = RewardModelScorer(untrained_rm).score([e.chat for e in EPISODES])
    best = {t: max((i for i, e in enumerate(EPISODES) if e.task_id == t), key=lambda i: raw[i]) for t in "ab"}
    assert chosen == [EPISODES[best["a"]].chat, EPISODES[best["b"]].chat]
    assert record["episodes"] == 5 and record["rm_vs_verifier"]["pairs"] == 2
    assert record["rm_vs_verifier"]["pairs_same_ending"] == 2  # the files' endings reach the audit


def test_bench_selection_shares_the_start_and_tabulates_each_arm(tmp_path, monkeypatch, capsys):
    """Without --start the verifier arm makes the warm start and the samples, and every other arm links to them;
    the reward arms score with the given reward model and zero what the episode files lack; a finished arm is not
    re-run."""
    from bench import bench_selection

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "telerl_rm.json").write_text("{}")
    calls = []
    held = {"verifier": 0.5, "rm_only": 0.25, "gated": 0.5, "weighted": 0.375}

    def fake_run(who, args, log):
        out = Path(args[args.index("--out") + 1])
        arm, seed = out.name, int(args[4].split("=")[1])
        calls.append((seed, arm, args))
        for name in bench_selection.SHARED:  # the verifier arm makes them; the others find links
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / ("config.json" if name == "sft" else "report.json")).write_text("{}")
        own, passing = (40, 40) if arm == "verifier" else (60, 30 + seed)
        summary = {"before": {"eval/success": 0.25, "eval/tasks": 40}, "before_sampled": {"1": 0.3},
                   "rft": [{"heldout": {"eval/success": held[arm] + seed / 40}, "heldout_sampled": {"1": 0.4}}],
                   "fine_tuning": {"rft1": {"conversations": 100 + own, "own": own}}}
        if arm != "verifier":
            summary["selection"] = {"rft1": {"chosen": own, "chosen_passing": passing,
                                             "rm_vs_verifier": {"pairwise_acc": 0.6 + seed / 10,
                                                                "best_of_group": 0.5}}}
        (out / "summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(bench_selection, "run_program", fake_run)
    argv = ["--rm", str(rm), "--out", str(tmp_path / "b"), "--seeds", "0", "1", "--arms", "rm_only", "verifier",
            "gated", "env.max_turns=20"]
    assert bench_selection.main(argv) == 0
    assert [(s, a) for s, a, _ in calls] == [(0, "verifier"), (0, "rm_only"), (0, "gated"), (1, "verifier"),
                                             (1, "rm_only"), (1, "gated")]
    shared = tmp_path / "b" / "seed1" / "verifier" / "sample1"
    assert (tmp_path / "b" / "seed1" / "gated" / "sample1").resolve() == shared.resolve()
    flags = {a: args for s, a, args in calls if s == 0}
    assert "--select" not in flags["verifier"] and not any(a.startswith("reward.") for a in flags["verifier"])
    assert flags["gated"][flags["gated"].index("--min-reward") + 1] == "1"
    assert {"reward.malformed_call_penalty=0", f"reward.rm_path={rm.resolve()}", "reward.mixing=gated",
            "env.max_turns=20"} <= set(flags["gated"])
    report = json.loads((tmp_path / "b" / "results.json").read_text())
    assert report["arms"]["verifier"]["passing_share"]["mean"] == 1.0
    assert report["arms"]["rm_only"]["passing_share"]["values"] == [0.5, 31 / 60]
    assert report["arms"]["rm_only"]["gain"]["values"] == pytest.approx([0.0, 0.025])
    assert "| rm_only | 60 | 0.508 ± 0.012 | 0.263 ± 0.018 | 0.013 ± 0.018 |" in capsys.readouterr().out
    assert "pairwise_acc 0.650 ± 0.071" in (tmp_path / "b" / "results.md").read_text()
    assert (tmp_path / "b" / "results.png").stat().st_size > 10_000  # the run's plot
    calls.clear()
    assert bench_selection.main(argv) == 0 and calls == []  # every arm finished: nothing runs again


def test_bench_selection_fine_tunes_each_arm_in_several_orders_and_averages_them(tmp_path, monkeypatch, capsys):
    """--orders 3: each arm's round runs three times on the same shared samples, the first in the default order (its
    usual folder, so an earlier run's arm counts as it) and the others with rl.rft --order-seed 1 and 2."""
    from bench import bench_selection

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "telerl_rm.json").write_text("{}")
    calls = []
    greedy = {"verifier": [0.5, 0.3, 0.4], "rm_only": [0.2, 0.35, 0.2]}  # by order

    def fake_run(who, args, log):
        out = Path(args[args.index("--out") + 1])
        arm = out.name.split("_order")[0]
        order = int(args[args.index("--order-seed") + 1]) if "--order-seed" in args else 0
        calls.append((out.name, order, log.name))
        for name in bench_selection.SHARED:
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / ("config.json" if name == "sft" else "report.json")).write_text("{}")
        summary = {"before": {"eval/success": 0.25, "eval/tasks": 40}, "before_sampled": {"1": 0.3},
                   "rft": [{"heldout": {"eval/success": greedy[arm][order]},
                            "heldout_sampled": {"1": 0.3 + order / 10}}],
                   "fine_tuning": {"rft1": {"conversations": 140, "own": 40}}}
        (out / "summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(bench_selection, "run_program", fake_run)
    argv = ["--rm", str(rm), "--out", str(tmp_path / "b"), "--seeds", "0", "--arms", "verifier", "rm_only",
            "--orders", "3"]
    assert bench_selection.main(argv) == 0
    assert calls == [("verifier", 0, "verifier.log"), ("verifier_order1", 1, "verifier_order1.log"),
                     ("verifier_order2", 2, "verifier_order2.log"), ("rm_only", 0, "rm_only.log"),
                     ("rm_only_order1", 1, "rm_only_order1.log"), ("rm_only_order2", 2, "rm_only_order2.log")]
    seed0 = tmp_path / "b" / "seed0"
    assert (seed0 / "rm_only_order2" / "sample1").resolve() == (seed0 / "verifier" / "sample1").resolve()
    report = json.loads((tmp_path / "b" / "results.json").read_text())
    assert report["arms"]["verifier"]["heldout"]["mean"] == pytest.approx(0.4)  # the orders' mean
    assert report["arms"]["rm_only"]["gain_sampled"]["mean"] == pytest.approx(0.1)
    assert [r["heldout"] for r in report["orders"]["0"]["rm_only"]] == [0.2, 0.35, 0.2]
    text = (tmp_path / "b" / "results.md").read_text()
    assert "- verifier: seed 0 greedy 0.500 / 0.300 / 0.400, sampled 0.300 / 0.400 / 0.500; std over orders: " \
           "greedy 0.100, sampled 0.100" in text
    calls.clear()
    assert bench_selection.main(argv) == 0 and calls == []  # every order finished: nothing runs again
    with pytest.raises(SystemExit):
        bench_selection.main([*argv[:-1], "0"])
    assert "--orders 0: at least 1" in capsys.readouterr().err


def test_the_selection_plot_pairs_each_runs_arms_and_names_a_bad_file(tmp_path, capsys):
    """Gains are each run's arm over that run's own start (runs from several results files, each seed one run); a
    file that is not bench_selection's is named, not a crash."""
    from bench import selection_plot

    def report(start, arms):
        return {"runs": {"0": {arm: {"before": start, "before_sampled": start, "heldout": start + g,
                                     "heldout_sampled": start + g / 2} for arm, g in arms.items()}}}

    reports = {"a": report(0.25, {"verifier": 0.1, "gated": 0.05}), "b": report(0.5, {"verifier": -0.05})}
    arms, greedy, sampled = selection_plot.paired_gains(reports)
    assert arms == ["verifier", "gated"]
    assert list(greedy) == ["a seed 0", "b seed 0"] and list(greedy["b seed 0"]) == ["verifier"]
    assert greedy["a seed 0"] == pytest.approx({"verifier": 0.1, "gated": 0.05})
    assert greedy["b seed 0"]["verifier"] == pytest.approx(-0.05)  # over its own start, 0.5
    assert sampled["a seed 0"]["gated"] == pytest.approx(0.025)
    assert selection_plot.order_ranges(reports) == ({}, {})  # no orders: no bars
    # a: verifier fine-tuned in 3 orders (greedy gains 0.0, 0.1, 0.2 over 0.25); gated in one, so no bar
    reports["a"]["orders"] = {"0": {"verifier": [{"before": 0.25, "before_sampled": 0.3, "heldout": 0.25 + g,
                                                  "heldout_sampled": 0.3 - g} for g in (0.1, 0.0, 0.2)],
                                    "gated": [reports["a"]["runs"]["0"]["gated"]]}}
    greedy_ranges, sampled_ranges = selection_plot.order_ranges(reports)
    assert greedy_ranges == {"a seed 0": {"verifier": pytest.approx((0.0, 0.2))}}
    assert sampled_ranges["a seed 0"]["verifier"] == pytest.approx((-0.2, 0.0))
    paths = []
    for name, r in reports.items():
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "results.json")
        paths[-1].write_text(json.dumps(r))
    assert selection_plot.main([*map(str, paths), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
    (tmp_path / "bad.json").write_text('{"seeds": [0]}')
    assert selection_plot.main([str(tmp_path / "bad.json"), "--out", str(tmp_path / "q.png")]) == 2
    assert "bad.json: not a bench_selection results.json" in capsys.readouterr().err
