"""Held-out evaluation: tau2's pass^k, the fixed task sample, hold-out of the evaluation split, eval/... metrics, and
the report and sweep reading them from metrics.jsonl."""
import json
from dataclasses import replace
from math import comb
from pathlib import Path

import pytest

from envs.tau2_telecom.session import EvalResult
from rl.contracts import Trajectory
from rl.evaluation import heldout_metrics, hold_out, pass_hat_k, select_eval_tasks

MMS2 = "[mms_issue]airplane_mode_on|data_mode_off[PERSONA:None]"
MMS3 = "[mms_issue]airplane_mode_on|data_mode_off|unseat_sim_card[PERSONA:Easy]"
DATA2 = "[mobile_data_issue]data_mode_off|data_usage_exceeded[PERSONA:None]"


def _episode(task_id: str, success: bool, tool_calls: int = 2) -> Trajectory:
    evaluation = EvalResult(task_id=task_id, reward=float(success), success=success, termination="agent_stop",
                            reward_basis=[], env_assertions=[], actions=[], communicate=[], nl_assertions=None,
                            db_match=None, turns=tool_calls + 1, tool_errors=0, rejected_calls=0)
    messages = [{"role": "tool", "content": "x"}] * tool_calls
    return Trajectory(task_id=task_id, group=0, messages=messages, eval=evaluation, turns=tool_calls + 1)


def test_pass_hat_k_is_taus_definition():
    assert pass_hat_k(4, 4, 4) == 1.0 and pass_hat_k(4, 3, 4) == 0.0
    assert pass_hat_k(4, 2, 1) == 0.5
    assert pass_hat_k(4, 3, 2) == pytest.approx(comb(3, 2) / comb(4, 2))  # 0.5: not 1 - (1 - 0.75)^2
    with pytest.raises(ValueError, match="k=5"):
        pass_hat_k(4, 4, 5)


def test_heldout_metrics_overall_per_fault_count_family_and_pass_k():
    greedy = [_episode(MMS2, True, 3), _episode(MMS3, False, 5), _episode(DATA2, True, 1)]
    sampled = ([_episode(MMS2, True)] * 2 + [_episode(MMS3, True), _episode(MMS3, False)]
               + [_episode(DATA2, False)] * 2)
    m = heldout_metrics(greedy, sampled, trials=2)
    assert m["eval/tasks"] == 3 and m["eval/success"] == pytest.approx(2 / 3)
    assert m["eval/success/faults_2"] == 1.0 and m["eval/success/faults_3"] == 0.0
    assert m["eval/success/mms_issue"] == 0.5 and m["eval/success/mobile_data_issue"] == 1.0
    assert m["eval/tool_calls"] == 3.0
    assert m["eval/pass^1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["eval/pass^2"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="expected 2 sampled episodes per task"):
        heldout_metrics(greedy, sampled[:-1], trials=2)
    assert "eval/pass^1" not in heldout_metrics(greedy)


def test_eval_sample_is_fixed_and_every_seed_sees_the_same_tasks():
    ids = [f"t{i:03d}" for i in range(100)]
    a = select_eval_tasks(ids, 10)
    assert a == select_eval_tasks(list(reversed(ids)), 10) and len(set(a)) == 10
    assert a != ids[:10]  # a sample, not the first ten ids (which would be one issue family in tau2's ids)
    assert select_eval_tasks(ids[:5], 10) == ids[:5]


def test_hold_out_keeps_the_whole_evaluation_split_out_of_training():
    train = {k: {} for k in ("a", "b", "c", "d")}
    split = {k: {} for k in ("c", "d", "e")}
    kept, held, dropped = hold_out(train, split, 2)
    assert set(kept) == {"a", "b"} and dropped == 2
    assert len(held) == 2 and set(held) <= set(split)
    with pytest.raises(ValueError, match="no training task is left"):
        hold_out({"c": {}}, split, 2)
    with pytest.raises(ValueError, match="train.eval_split='test' has no task"):
        hold_out(train, {}, 2, "train.eval_split='test'")


def test_report_and_sweep_read_heldout_success_from_metrics(tmp_path):
    from rl.report import write_report
    from rl.tools.sweep.results import _heldout

    rows = [{"step": 0, "eval/success": 0.1, "eval/tasks": 40},
            {"step": 1, "reward/mean": 0.2, "success_rate": 0.25, "episode/tool_calls": 9.0},
            {"step": 2, "reward/mean": 0.4, "success_rate": 0.5, "eval/success": 0.3, "eval/pass^2": 0.2,
             "eval/pass^1": 0.35, "eval/tasks": 40, "reward/rm_vs_verifier/pairwise_acc": 0.7}]
    assert write_report(rows, tmp_path / "report.png").stat().st_size > 10_000
    assert _heldout(rows) == {"heldout/success_before": 0.1, "heldout/success_after": 0.3}
    assert _heldout(rows[1:2]) == {}


def test_max_faults_and_tiny_shape_are_config_keys_with_clear_errors():
    from envs.tau2_telecom.tasks import task_faults
    from rl.config import ConfigError, load_config
    from rl.runtime import load_tasks

    cfg = load_config(None, ["env.split=test", "env.max_faults=3", "env.mode=solo"])
    tasks = load_tasks(cfg)
    assert len(tasks) == 19 and max(len(task_faults(t)) for t in tasks) == 3  # tau2's test split: 10 + 9
    assert len(load_tasks(cfg, "train")) == 15 + 17
    with pytest.raises(ConfigError, match="model.tiny.hidden.*multiple of 64"):
        load_config(None, ["model.tiny.hidden=100"])
    with pytest.raises(ConfigError, match="env.max_faults"):
        load_config(None, ["env.max_faults=0"])
    assert load_config(None, ["train.steps=0"]).train.steps == 0  # evaluation only


def test_bench_learning_table_reports_mean_std_gain_and_context():
    from bench.bench_learning import _mean_std, _table

    runs = {s: {"before": {"eval/success": b, "eval/success/faults_2": b}, "after": {"eval/success": a,
                                                                                    "eval/success/faults_2": a},
                "steps": 20, "rft": [{"round": 1, "train_success": 0.4 + s / 10, "heldout": {"eval/success": a}}]}
            for s, (b, a) in enumerate([(0.1, 0.3), (0.2, 0.5), (0.0, 0.4)])}
    report = {"config": "c.yaml", "overrides": [], "seeds": [0, 1, 2], "sft_limit": 20, "runs": runs,
              "rft": {"trials": 8, "temperature": 0.7, "per_task": 2},
              "before": _mean_std([0.1, 0.2, 0.0]), "after": _mean_std([0.3, 0.5, 0.4]),
              "gain": _mean_std([0.2, 0.3, 0.4]), "expert": 1.0, "ceiling": 0.6}
    text = "\n".join(_table(report, 40))
    assert "| gain | 0.300 ± 0.100 | |" in text and "| SFT start | 0.100 ± 0.100 | |" in text
    assert "| after rejection-sampling round 1 | 0.400 ± 0.100 | 0.500 ± 0.100 (before the round) |" in text
    assert "1 round of rejection sampling (8 samples" in text and "then RL (20 steps)" in text
    assert "ceiling" in text and "| the expert (scripted, same tasks) | 1.000 |" in text
    assert "| after | 0.40 |" in text  # per fault count, mean over seeds
    assert "Validation" not in text
    for s, run in runs.items():  # train.validation_tasks: its own table, by stage
        run["before_validation"] = {"eval/success": 0.5, "eval/tasks": 30}
        run["rft"][0]["validation"] = {"eval/success": 0.6 + s / 10, "eval/tasks": 30}
    text = "\n".join(_table(report, 40))
    assert "Validation: 30 training tasks set aside" in text
    assert "| SFT start | 0.500 ± 0.000 |\n| after rejection-sampling round 1 | 0.700 ± 0.100 |" in text
    # the number of rounds kept by validation: round 1 validates better than the start in every seed; on a tie the
    # start is kept, and its held-out success is the start's (gain 0)
    assert "(rounds 1 / 1 / 1; 0 = the start" in text and "held-out greedy 0.400 ± 0.100, gain 0.300 ± 0.100" in text
    runs[2]["rft"][0]["validation"]["eval/success"] = 0.5  # a tie with the start: the start is kept
    text = "\n".join(_table(report, 40))
    assert "(rounds 1 / 1 / 0; 0 = the start" in text and "held-out greedy 0.267 ± 0.252, gain 0.167 ± 0.153" in text
    # --rft-unsolved-trials: the header says so, and each round's row how many tasks were retried and solved
    report["rft"]["unsolved_trials"] = 8
    for s, run in runs.items():
        run["rft"][0].update(unsolved=20 + s, unsolved_then_solved=s)
    text = "\n".join(_table(report, 40))
    assert "(8 samples per training task at 0.7, the tasks none of them solved 8 times more, up to 2" in text
    assert ("| 0.500 ± 0.100 (before the round); 21 tasks unsolved, 1 of them solved by the extra samples (mean) |"
            in text)


def test_bench_learning_runs_each_seed_as_one_rl_rft_program(tmp_path, monkeypatch):
    """A seed's warm start and rounds are one rl.rft program with the bench's recipe and engines; the ceiling is rl.rft
    on every expert conversation with no rounds (no sampled held-out evaluation); a finished recipe is not re-run."""
    from argparse import Namespace

    from bench import bench_learning

    calls = []

    def fake_run(args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        rounds = int(args[args.index("--rounds") + 1])
        (out / "summary.json").write_text(json.dumps({"before": {"eval/success": 0.25}, "before_sampled": None,
                                                      "rft": [{"round": r + 1} for r in range(rounds)]}))

    monkeypatch.setattr(bench_learning, "_run", fake_run)
    args = Namespace(rft_rounds=2, rft_trials=8, rft_temperature=0.7, rft_per_task=2, rft_epochs=3, rft_lr=1e-3,
                     rft_dtype="bfloat16", rft_engines=2, config="c.yaml", sft_epochs=20, sft_lr=3e-3,
                     heldout_trials=4, rft_unsolved_trials=8, rft_prefer="shortest")
    summary = bench_learning._recipe(args, 1, tmp_path / "seed1", 100, 2, ["env.max_turns=20"])
    assert len(summary["rft"]) == 2
    (cmd,) = calls
    flags = {f: cmd[cmd.index(f) + 1] for f in ("--out", "--sft-limit", "--sft-epochs", "--rounds", "--trials",
                                                "--temperature", "--per-task", "--epochs", "--lr", "--heldout-trials",
                                                "--unsolved-trials", "--prefer")}
    assert cmd[1] == "rl.rft" and "seed=1" in cmd and "env.max_turns=20" in cmd
    assert flags == {"--out": str(tmp_path / "seed1"), "--sft-limit": "100", "--sft-epochs": "20", "--rounds": "2",
                     "--trials": "8", "--temperature": "0.7", "--per-task": "2", "--epochs": "3", "--lr": "0.001",
                     "--heldout-trials": "4", "--unsolved-trials": "8", "--prefer": "shortest"}
    assert {"rollout.dtype=bfloat16", "rollout.num_workers=2", "env_pool.num_workers=2"} <= set(cmd)
    bench_learning._recipe(args, 1, tmp_path / "seed1", 100, 2, ["env.max_turns=20"])
    assert len(calls) == 1  # finished: not re-run
    bench_learning._recipe(args, 1, tmp_path / "seed1", 100, 3, [])
    assert len(calls) == 2  # one more round asked for: rl.rft finishes it
    bench_learning._recipe(args, 0, tmp_path / "ceiling", 0, 0, [])
    ceiling = calls[-1]
    assert ceiling[ceiling.index("--sft-limit") + 1] == "0" and ceiling[ceiling.index("--heldout-trials") + 1] == "0"


def test_bench_learning_with_rounds_and_no_rl_ends_at_the_last_round(tmp_path, monkeypatch, capsys):
    """train.steps=0 after rejection-sampling rounds: no rl.train run (it would only re-evaluate the last round's
    policy), the gain is the last round's held-out success over the SFT start's."""
    from bench import bench_learning

    def heldout(p):
        return {"eval/success": p, "eval/tasks": 40, "eval/success/faults_2": p}

    def fake_run(args, log):
        assert args[1] == "rl.rft"
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({
            "before": heldout(0.25), "before_sampled": {"1": 0.2, "4": 0.1},
            "rft": [{"round": 1, "train_success": 0.3, "heldout": heldout(0.4),
                     "heldout_sampled": {"1": 0.3, "4": 0.15}},
                    {"round": 2, "train_success": 0.35, "heldout": heldout(0.5),
                     "heldout_sampled": {"1": 0.5, "4": 0.25}}]}))

    monkeypatch.setattr(bench_learning, "_run", fake_run)
    monkeypatch.setattr(bench_learning, "_train", lambda *a: pytest.fail("rl.train ran with train.steps=0"))
    monkeypatch.setattr(bench_learning, "_expert_success", lambda *a: 1.0)
    assert bench_learning.main(["--out", str(tmp_path), "--seeds", "0", "--no-ceiling", "--rft-rounds", "2",
                                "--heldout-trials", "4", "train.steps=0"]) == 0
    with pytest.raises(SystemExit):  # sampled held-out evaluations belong to the rounds
        bench_learning.main(["--out", str(tmp_path / "x"), "--heldout-trials", "4"])
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["gain"]["mean"] == pytest.approx(0.25) and report["after"]["mean"] == 0.5
    text = (tmp_path / "results.md").read_text()
    assert "no RL after them" in text and "after RL" not in text
    assert "held-out success (base, 40 tasks): before 0.25 -> after 0.50" in capsys.readouterr().out
    assert "| after rejection-sampling round 2 | 0.500 ± 0.000 | 0.350 ± 0.000 (before the round) |" in text
    # the held-out tasks sampled 4 times per stage: pass^1 and pass^4, and the pass^1 gain
    assert "| SFT start | 0.200 ± 0.000 | 0.100 ± 0.000 |" in text
    assert "| after rejection-sampling round 2 | 0.500 ± 0.000 | 0.250 ± 0.000 |" in text
    assert "| gain | 0.300 ± 0.000 | |\n\nPer number" in text


def test_sft_demonstrations_and_rl_training_tasks_share_one_hold_out():
    """env.split=base holds tau2's test split; with train.eval_split=test neither rl.train nor rl.sft may learn
    from those tasks."""
    from rl.config import load_config
    from rl.demonstrations import teacher_demonstrations
    from rl.runtime import load_tasks, split_tasks

    cfg = load_config(None, ["env.split=base", "env.max_faults=2", "env.prompt=minimal", "train.eval_split=test",
                             "train.eval_tasks=40"])
    tasks = split_tasks(cfg)
    test_ids = set(load_tasks(cfg, "test"))
    assert len(test_ids) == 10 and tasks.left_out == 10 and set(tasks.heldout) == test_ids
    assert len(tasks.train) == 15 and not set(tasks.train) & test_ids  # tau2's train split, 2 faults
    demos = teacher_demonstrations(cfg, "expert")
    assert demos.considered == 15 and len(demos.conversations) == 15
    assert split_tasks(load_config(None, ["env.split=base", "train.eval_tasks=0"])).heldout == {}

    # train.task_ids: a fixed few of the training tasks (demonstrations from them only); a held-out id is refused
    some = sorted(tasks.train)[:3]
    few = load_config(None, ["env.split=base", "env.max_faults=2", "env.prompt=minimal", "train.eval_split=test",
                             "train.eval_tasks=40", f"train.task_ids=[{','.join(repr(t) for t in some)}]"])
    assert sorted(split_tasks(few).train) == some and split_tasks(few).heldout == tasks.heldout
    assert teacher_demonstrations(few, "expert").considered == 3
    held = sorted(test_ids)[0]
    with pytest.raises(ValueError, match=r"train.task_ids: 1 of 2 are not training tasks .*held out"):
        split_tasks(replace(few, train=replace(few.train, task_ids=[some[0], held])))


def test_validation_tasks_are_set_aside_from_training_the_same_for_every_seed():
    """train.validation_tasks: training tasks to choose settings by, never trained on or imitated; a fixed draw, so
    every seed of a sweep is validated on the same tasks."""
    from rl.config import ConfigError, load_config
    from rl.demonstrations import teacher_demonstrations
    from rl.runtime import split_tasks

    base = ["env.split=base", "env.max_faults=2", "env.prompt=minimal", "train.eval_split=test", "train.eval_tasks=40"]
    whole = split_tasks(load_config(None, base))
    cfg = load_config(None, [*base, "train.validation_tasks=5"])
    tasks = split_tasks(cfg)
    assert len(tasks.validation) == 5 and len(tasks.train) == 10 and tasks.heldout == whole.heldout
    assert set(tasks.validation) | set(tasks.train) == set(whole.train) and not set(tasks.validation) & set(tasks.train)
    assert split_tasks(load_config(None, [*base, "train.validation_tasks=5", "seed=7"])).validation == tasks.validation
    assert teacher_demonstrations(cfg, "expert").considered == 10
    with pytest.raises(ValueError, match="train.validation_tasks=15 leaves no training task"):
        split_tasks(load_config(None, [*base, "train.validation_tasks=15"]))
    with pytest.raises(ValueError, match="set aside for validation"):
        split_tasks(load_config(None, [*base, "train.validation_tasks=5",
                                       f"train.task_ids=[{sorted(tasks.validation)[0]!r}]"]))
    with pytest.raises(ConfigError, match="train.validation_tasks"):
        load_config(None, ["train.validation_tasks=-1"])
