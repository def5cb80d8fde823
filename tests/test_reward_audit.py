"""On-policy reward audit (rl/reward_audit.py) and its offline form (`rl.rm.eval --rollouts`)."""
import json

import pytest

from rl.contracts import EpisodeRecord
from rl.reward_audit import AuditMonitor, audit_component, audit_step, spearman
from rl.rm.eval import main

# Three tasks of one step. Task a: a success the component scores 0.9, failures at 0.2 and 0.9 (a tie with the
# success). Task b: the component prefers the failure. Task c: nothing passed, so it has no pair and no best pick.
GROUPS = ["a", "a", "a", "b", "b", "c", "c"]
PASSED = [True, False, False, True, False, False, False]
CHECKS = [1.0, 0.2, 0.1, 1.0, 0.3, 0.0, 0.1]
RM = [0.9, 0.2, 0.9, 0.1, 0.5, 0.4, 0.4]


def test_audit_by_hand():
    a = audit_component(GROUPS, PASSED, CHECKS, RM)
    assert a["pairwise_acc"] == pytest.approx((1 + 0.5 + 0) / 3) and a["pairs"] == 3
    assert a["best_of_group"] == pytest.approx((0.5 + 0) / 2)  # a: the top is shared with a failure; b: a failure
    assert a["group_std"] == pytest.approx((0.7 ** 2 * 2 / 9) ** 0.5 / 3 + 0.2 / 3)  # c's spread is 0
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0) and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2, 2, 3], [1, 2, 3, 4]) < 1
    assert audit_component(["x", "x"], [False, False], [0, 0.5], [0.1, 0.2]).keys() == {"spearman_checks", "group_std"}


def test_same_ending_pairs_tell_a_surface_reader_from_a_task_reader():
    """A score that only ranks crashed episodes low agrees with tau2 on the pairs that ended differently and not on
    the ones that ended the same way; pairwise_acc alone would not tell."""
    groups = ["t"] * 5
    passed = [True, True, False, False, False]
    endings = ["agent_stop", "agent_stop", "agent_error", "agent_error", "agent_stop"]
    surface = [1.0, 1.0, 0.0, 0.0, 1.0]  # "did it stop cleanly?": the clean failure ties with the successes
    a = audit_component(groups, passed, [1, 1, 0, 0, 0], surface, endings)
    assert a["pairwise_acc"] == pytest.approx((4 * 1 + 2 * 0.5) / 6)  # 0.83 looks like a good reward model
    assert a["pairwise_acc_same_ending"] == pytest.approx(0.5) and a["pairs_same_ending"] == 2  # chance
    task = audit_component(groups, passed, [1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3], endings)
    assert task["pairwise_acc_same_ending"] == 1.0
    assert "pairwise_acc_same_ending" not in audit_component(groups, passed, [1, 1, 0, 0, 0], surface)  # unknown


def test_audit_step_names_components_and_skips_missing_ones():
    components = [{"checks": c, "rm": r} for c, r in zip(CHECKS, RM)]
    m = audit_step(GROUPS, PASSED, components)
    assert m["reward/rm_vs_verifier/pairwise_acc"] == pytest.approx(0.5) and not any("judge" in k for k in m)
    assert audit_step(GROUPS, PASSED, [{"checks": c} for c in CHECKS]) == {}


def test_an_rm_only_reward_is_still_correlated_with_the_verifier():
    """With the checks' weights at 0 (the rm_only arm) every episode's checks score is 0; the rank correlation then
    uses tau2's own reward instead of going missing where the audit matters most."""
    tau2 = [float(p) for p in PASSED]
    components = [{"checks": 0.0, "tau2": t, "rm": r} for t, r in zip(tau2, RM)]
    m = audit_step(GROUPS, PASSED, components)
    assert m["reward/rm_vs_verifier/spearman_checks"] == pytest.approx(spearman(RM, tau2))
    weighted = audit_step(GROUPS, PASSED, [{"checks": c, "tau2": t, "rm": r} for c, t, r in zip(CHECKS, tau2, RM)])
    assert weighted["reward/rm_vs_verifier/spearman_checks"] == pytest.approx(spearman(RM, CHECKS))  # checks first
    nothing_passed = [{"checks": 0.0, "tau2": 0.0, "rm": r} for r in RM]
    assert "reward/rm_vs_verifier/spearman_checks" not in audit_step(GROUPS, [False] * 7, nothing_passed)


def test_the_alarm_rings_after_patience_low_steps_and_resets(capsys):
    monitor = AuditMonitor(min_agreement=0.6, patience=2)
    key, alarm = "reward/rm_vs_verifier/pairwise_acc", "reward/rm_vs_verifier/alarm"
    assert monitor.update(1, {key: 0.5}) == {alarm: 0.0}
    assert monitor.update(2, {}) == {alarm: 0.0}  # no mixed group: neither counts nor resets
    assert monitor.update(3, {key: 0.4}) == {alarm: 1.0}
    assert "reward.audit_min_agreement=0.6" in capsys.readouterr().err
    assert monitor.update(4, {key: 0.9}) == {alarm: 0.0}
    assert AuditMonitor(None).update(1, {key: 0.0}) == {}


def _run_dir(tmp_path, with_rm: bool):
    run = tmp_path / ("run_rm" if with_rm else "run")
    run.mkdir()
    rows = []
    for step in (1, 2):
        for g, ok, c, r in zip(GROUPS, PASSED, CHECKS, RM):
            comp = {"success": float(ok), "tau2": float(ok), "checks": c, **({"rm": r} if with_rm else {})}
            rows.append(EpisodeRecord(step=step, task_id=g, group=ord(g), reward=c, components=comp,
                                      messages=[{"role": "user", "content": f"ticket {g}"},
                                                {"role": "assistant", "content": f"reply {r}"}]).to_row())
    (run / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_offline_audit_of_a_runs_logged_scores(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["--rollouts", str(_run_dir(tmp_path, with_rm=True)), "--out", str(out)]) == 0
    audit = json.loads((out / "report.json").read_text())["on_policy"]
    assert audit["episodes"] == 14 and audit["passed"] == 4 and set(audit["per_step"]) == {"1", "2"}
    # the same episodes in both steps: each step and the pooled audit give the same agreement
    assert audit["overall"]["reward/rm_vs_verifier/pairwise_acc"] == pytest.approx(0.5)
    assert audit["per_step"]["2"]["reward/rm_vs_verifier/best_of_group"] == pytest.approx(0.25)
    assert "| rm_vs_verifier/pairwise_acc | 0.500 |" in (out / "report.md").read_text()
    assert "| rm_vs_verifier/pairs | 6 | 3 | 3 |" in (out / "report.md").read_text()
    assert main(["--rollouts", str(_run_dir(tmp_path, with_rm=False)), "--out", str(out)]) == 2
    assert "--rm PATH" in capsys.readouterr().err
    assert main(["--rollouts", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no trajectories.jsonl" in capsys.readouterr().err


def test_offline_audit_of_an_rl_rft_sampling_round(tmp_path):
    """rl.evaluate's episodes.jsonl (rl.rft's sample<r>/): one step, a group per task, tau2's reward as checks."""
    from rl.rm.eval import audit_rollouts, audit_table

    rows = [{"task_id": g, "trial": i, "success": ok, "reward": float(ok), "messages": [],  # tau2's log: not scored
             "chat_messages": [{"role": "assistant", "content": str(r)}], "termination": "agent_stop"}
            for i, (g, ok, r) in enumerate(zip(GROUPS, PASSED, RM))]

    class Scorer:  # scores an episode by the number in its reply: the RM column above
        path = "stub"

        def score(self, conversations):
            return [float(c[-1]["content"]) for c in conversations]

    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    audit = audit_rollouts([str(tmp_path)], Scorer())
    assert audit["episodes"] == 7 and audit["passed"] == 2 and set(audit["per_step"]) == {"0"}
    assert audit["overall"]["reward/rm_vs_verifier/pairwise_acc"] == pytest.approx(0.5)
    assert audit["overall"]["reward/rm_vs_verifier/pairs_same_ending"] == 3  # every episode stopped the same way
    # beside it, a score that only asks whether the agent stopped (here every episode did: ties, 0.5)
    assert audit["ending_baseline"]["pairwise_acc"] == 0.5
    assert ("| statistic | all steps | did-it-stop baseline |\n|---|---|---|\n| rm_vs_verifier/pairwise_acc | 0.500 | "
            "0.500 |\n") in audit_table(audit)
    rows[3]["chat_messages"] = None  # a scripted agent's episode keeps no conversation of a policy
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"episodes.jsonl:4: no chat_messages to score"):
        audit_rollouts([str(tmp_path)], Scorer())


def test_the_audit_can_draw_tasks_with_both_outcomes_and_cap_each_outcome(tmp_path, capsys):
    """--audit-tasks N --audit-per-outcome K: a seeded draw of N tasks that hold a pass and a failure, at most K
    episodes of each outcome; tasks with one outcome only are never drawn."""
    from rl.rm.eval import audit_rollouts

    rows = [{"task_id": f"t{t}", "trial": k, "success": k < t % 3, "reward": float(k < t % 3), "messages": [],
             "chat_messages": [{"role": "assistant", "content": f"{k}"}], "termination": "agent_stop"}
            for t in range(12) for k in range(4)]  # t % 3 == 0: no pass; 1: one pass; 2: two passes
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Scorer:
        path = "stub"

        def __init__(self):
            self.seen = []

        def score(self, conversations):
            self.seen += conversations
            return [-float(c[-1]["content"]) for c in conversations]  # earlier trials (the passes) score higher

    scorer = Scorer()
    audit = audit_rollouts([str(tmp_path)], scorer, tasks=5, per_outcome=1, seed=3)
    assert audit["episodes"] == 10 == len(scorer.seen) and audit["passed"] == 5  # 5 tasks x (1 pass + 1 failure)
    assert audit["overall"]["reward/rm_vs_verifier/pairwise_acc"] == 1.0
    assert audit["ending_baseline"]["pairwise_acc"] == 0.5  # every episode stopped: the baseline cannot tell
    assert "auditing 10 episodes of 5 of the 8 tasks with both" in capsys.readouterr().err
    again = audit_rollouts([str(tmp_path)], Scorer(), tasks=5, per_outcome=1, seed=3)
    assert again == audit  # the same draw for the same seed
    # every mixed task: one pass + 2 of its 3 failures (t % 3 == 1), two passes + two failures (t % 3 == 2)
    assert audit_rollouts([str(tmp_path)], Scorer(), per_outcome=2)["episodes"] == 4 * 3 + 4 * 4
    with pytest.raises(SystemExit):
        main(["--pairs", "x.jsonl", "--rm", "y", "--audit-tasks", "0", "--out", str(tmp_path / "o")])
