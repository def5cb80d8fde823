"""rl.tools.sweep: sweep-file validation, grid/random expansion, resume (skip finished, retry failed), failed-run
reports and aggregation over real metrics.jsonl files (written by rl.run_dir.RunDir from a stand-in trainer), the
local subprocess runner, and (slow) a 2-arm sweep of the real rl.train as Ray jobs on a local head."""
import csv
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rl.run_dir import RunDir
from rl.tools.sweep.cli import main, run_sweep
from rl.tools.sweep.results import _mean_curve, _series
from rl.tools.sweep.runners import LocalTrain, SequentialRunner
from rl.tools.sweep.spec import DONE_FILE, SweepError, _parse_override_value, expand, load_sweep, plan, render
from tests.conftest import REPO_ROOT

TINY = Path(REPO_ROOT) / "configs" / "test_tiny.yaml"


def write_sweep(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    """A sweep file over configs/test_tiny.yaml writing into tmp_path/out; `body` adds the rest."""
    path = tmp_path / name
    path.write_text(f"base_config: {TINY}\nsweep_dir: {tmp_path / 'out'}\n" + textwrap.dedent(body))
    return path


ALGOS = """\
seeds: [0, 1]
overrides: [train.steps=2]
params:
  algorithm.name: [grpo, rloo]
metrics: [reward/mean, success_rate]
"""


def fake_metrics(cfg, step: int) -> dict:
    """What the stand-in trainer logs: known numbers, so the aggregates can be checked exactly."""
    bonus = 0.5 if cfg.algorithm.name == "rloo" else 0.0
    return {"reward/mean": 0.1 * step + 0.01 * cfg.seed + bonus, "success_rate": 0.5 * cfg.seed, "time/step": 1.0,
            "episodes": 4}


class FakeTrain:
    """Stands in for `python -m rl.train` (which takes minutes): the same RunDir, hence the same metrics.jsonl, and
    the same refusal to reuse a non-empty run dir without --resume. Runs whose label is in `fail` crash after
    their first step."""

    def __init__(self, fail=()):
        self.fail, self.calls = set(fail), []

    def __call__(self, run) -> int:
        args = run.train_args()
        resume = "--resume" in args
        self.calls.append((run.label, resume))
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        rd = RunDir(run.config, resume=resume)
        try:
            start = len(rd.metrics())
            for step in range(max(1, start), run.config.train.steps + 1):  # a resume re-logs its last step
                rd.log_metrics(step, fake_metrics(run.config, step))
                if run.label in self.fail:
                    with open(run.log_path, "a") as log:
                        log.write("step 1 done\nTraceback (most recent call last):\nRuntimeError: boom in "
                                  f"{run.label}\n")
                    return 1
        finally:
            rd.close()
        with open(run.log_path, "a") as log:
            log.write(f"trained {run.label}\n")
        return 0


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ expansion

def test_grid_is_every_combination_times_seeds_each_config_validated(tmp_path):
    rm = tmp_path / "rm"
    rm.mkdir()  # reward.rm_path must be a folder before anything runs
    sweep = load_sweep(write_sweep(tmp_path, f"""\
        seeds: [3, 4]
        overrides: [reward.rm_path={rm}, train.steps=1]
        params:
          reward.mixing: [weighted, gated]
          reward.rm_weight: [0.0, 0.5]
        """))
    runs = plan(sweep)
    names = ["mixing=weighted,rm_weight=0", "mixing=weighted,rm_weight=0.5", "mixing=gated,rm_weight=0",
             "mixing=gated,rm_weight=0.5"]
    assert [r.arm.name for r in runs] == [n for n in names for _ in (3, 4)]
    assert [r.seed for r in runs] == [3, 4] * 4
    for r in runs:
        assert r.config.reward.mixing == r.arm.values["reward.mixing"]
        assert r.config.reward.rm_weight == r.arm.values["reward.rm_weight"]
        assert r.config.seed == r.seed and r.config.train.steps == 1 and r.config.reward.rm_path == str(rm)
        assert r.run_dir == tmp_path / "out" / r.arm.name / f"seed{r.seed}"
        assert r.config.run_dir == str(r.run_dir)
        assert r.train_args()[:2] == ["--config", str(TINY)] and "--resume" not in r.train_args()


def test_random_draws_are_reproducible_in_range_and_typed(tmp_path):
    body = """\
        mode: random
        num_samples: 6
        random_seed: {seed}
        params:
          learner.lr: {{low: 1.0e-5, high: 1.0e-2, log: true}}
          algorithm.group_size: {{low: 2, high: 8}}
          algorithm.name: {{choices: [grpo, rloo, dr_grpo]}}
        """
    a = expand(load_sweep(write_sweep(tmp_path, body.format(seed=1), "a.yaml")))
    again = expand(load_sweep(write_sweep(tmp_path, body.format(seed=1), "b.yaml")))
    other = expand(load_sweep(write_sweep(tmp_path, body.format(seed=2), "c.yaml")))
    assert [x.values for x in a] == [x.values for x in again]  # resume relies on the same arms every time
    assert [x.values for x in a] != [x.values for x in other]
    assert len(a) == 6 and len({x.name for x in a}) == 6
    for arm in a:
        v = arm.values
        assert 1e-5 <= v["learner.lr"] <= 1e-2 and isinstance(v["learner.lr"], float)
        assert 2 <= v["algorithm.group_size"] <= 8 and type(v["algorithm.group_size"]) is int  # an int key
        assert v["algorithm.name"] in ("grpo", "rloo", "dr_grpo")
    plan(load_sweep(write_sweep(tmp_path, body.format(seed=1), "d.yaml")))  # every drawn config validates


@pytest.mark.parametrize("value", ["weighted", "0.5", "null", "x y", "runs/rm/model", True, None, 1e-5, 3, 0.1])
def test_override_values_round_trip(value):
    assert _parse_override_value(render(value)) == (type(value), value)


# ------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("body, expected", [
    ("paramz:\n  algorithm.name: [grpo]\n", ["sweep.yaml:3:", "unknown sweep key 'paramz'"]),
    ("params:\n  algorithm.nme: [grpo, rloo]\n",
     ["sweep.yaml:4:", "param 'algorithm.nme'", "'algorithm.nme' is unknown", "expected one of: name, group_size"]),
    ("params:\n  algorithm.name: [grpo, ppo2]\n",
     ["sweep.yaml:4:", "param 'algorithm.name' = 'ppo2'", "one of: grpo, dr_grpo, rloo, reinforce_pp"]),
    ("params:\n  train.steps: [1, two]\n", ["sweep.yaml:4:", "param 'train.steps' = 'two'", "an integer"]),
    # Cross-key rule: gated mixing with rm_weight 1.0 needs task_weight > 1.0 (test_tiny keeps 1.0).
    ("overrides: [reward.rm_path=/tmp]\nparams:\n  reward.mixing: [weighted, gated]\n  reward.rm_weight: [1.0]\n",
     ["sweep.yaml:5:", "param 'reward.mixing' = 'gated'", "config key 'reward.task_weight': got 1.0",
      "with mixing 'gated'"]),
    ("overrides:\n  - train.steps=2\n  - train.stepz=3\n",
     ["sweep.yaml:5:", "override 'train.stepz=3'", "'train.stepz' is unknown"]),
    ("overrides: [train.steps]\n", ["sweep.yaml:3:", "key=value"]),
    ("params:\n  seed: [1, 2]\n", ["sweep.yaml:4:", "param 'seed'", "use `seeds`"]),
    ("overrides: [run_dir=x]\n", ["sweep.yaml:3:", "the sweep sets it"]),
    ("mode: random\nparams:\n  learner.lr: {low: 1.0e-5, high: 1.0e-3}\n",
     ["sweep.yaml:3:", "'num_samples'", "with mode 'random'"]),
    ("params:\n  learner.lr: {low: 1.0e-5, high: 1.0e-3}\n", ["sweep.yaml:4:", "are for mode 'random'"]),
    ("mode: random\nnum_samples: 2\nparams:\n  learner.lr: {low: 1.0e-3, high: 1.0e-5}\n",
     ["sweep.yaml:6:", "low < high"]),
    ("mode: random\nnum_samples: 2\nparams:\n  learner.lr: {low: 0, high: 1, log: true}\n",
     ["sweep.yaml:6:", "low > 0 with log"]),
    ("mode: random\nnum_samples: 5\nparams:\n  algorithm.name: {choices: [grpo, rloo]}\n",
     ["sweep.yaml:4:", "at most 2"]),
    ("params:\n  algorithm.name: []\n", ["sweep.yaml:4:", "a non-empty list"]),
    ("params:\n  algorithm.name: [grpo, grpo]\n", ["sweep.yaml:4:", "distinct values"]),
    ("seeds: [0, 0]\n", ["sweep.yaml:3:", "distinct seeds"]),
    ("seeds: 3\n", ["sweep.yaml:3:", "a non-empty list of integers"]),
    ("smooth: 0\n", ["sweep.yaml:3:", "smooth", "an integer >= 1"]),
    ("mode: grid\nmode: random\n", ["sweep.yaml:4:", "duplicate sweep key 'mode'"]),
    ("params:\n  algorithm.name: [grpo\n", ["sweep.yaml:", "YAML syntax error"]),
    ("overrides: [reward.rm_path=/nonexistent/rm, reward.rm_weight=0.5]\n",
     ["reward.rm_path '/nonexistent/rm' is not a folder", "python -m rl.rm.train"]),
    # mode: list (named arms)
    ("mode: list\n", ["sweep.yaml:3:", "sweep key 'arms'", "with mode 'list'"]),
    ("mode: list\narms:\n  base: {}\n  typo: {algorithm.nme: grpo}\n",
     ["sweep.yaml:6:", "param 'algorithm.nme' = 'grpo' (arm 'typo')", "'algorithm.nme' is unknown"]),
    ("mode: list\narms:\n  a/b: {}\n", ["sweep.yaml:5:", "arm name 'a/b'"]),
    ("mode: list\narms:\n  a: {seed: 1}\n", ["sweep.yaml:5:", "the sweep sets it"]),
    ("mode: list\narms:\n  a: [train.steps=1]\n", ["sweep.yaml:5:", "arm 'a'", "a mapping of dotted config keys"]),
    ("mode: list\nparams:\n  algorithm.name: [grpo]\narms:\n  a: {}\n", ["sweep.yaml:4:", "no params with mode"]),
    ("params:\n  algorithm.name: [grpo]\narms:\n  a: {}\n", ["sweep.yaml:5:", "no arms with mode 'grid'"]),
])
def test_bad_sweeps_fail_before_anything_runs_naming_file_line_and_key(tmp_path, body, expected):
    path = write_sweep(tmp_path, body)
    with pytest.raises(SweepError) as e:
        plan(load_sweep(path))
    for part in expected:
        assert part in str(e.value), f"{part!r} not in: {e.value}"
    assert not (tmp_path / "out").exists()


def test_missing_base_config_and_key(tmp_path):
    (tmp_path / "a.yaml").write_text("base_config: nowhere.yaml\nsweep_dir: out\n")
    with pytest.raises(SweepError, match=r"a\.yaml:1: base_config 'nowhere.yaml' not found"):
        load_sweep(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("sweep_dir: out\n")
    with pytest.raises(SweepError, match="missing sweep key 'base_config'"):
        load_sweep(tmp_path / "b.yaml")


def test_the_repo_sweeps_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the RM's placeholder path is relative: a runs/rm/model of one's own must not count
    runs = plan(load_sweep(Path(REPO_ROOT) / "configs" / "sweeps" / "algorithms.yaml"))
    assert len(runs) == 8 and {r.config.algorithm.name for r in runs} == {"grpo", "dr_grpo", "rloo", "reinforce_pp"}
    arms = ["checks_only", "rm_only", "weighted", "gated", "multiplicative"]
    for name, base in (("reward_mixing", "laptop.yaml"), ("reward_mixing_cluster", "qwen2.5-1.5b-2xgpu.yaml")):
        sweep = load_sweep(Path(REPO_ROOT) / "configs" / "sweeps" / f"{name}.yaml")
        with pytest.raises(SweepError, match="train the reward model first"):  # the RM is a placeholder path
            plan(sweep)
        runs = plan(sweep, check_paths=False)  # every arm is a valid config (gated's weight rule included)
        assert sweep.base_config.name == base and len(runs) == 15
        by_arm = {r.arm.name: r.config.reward for r in runs if r.seed == 0}
        assert list(by_arm) == arms
        assert by_arm["checks_only"].rm_weight == 0 and by_arm["checks_only"].task_weight > 0
        rm_only = by_arm["rm_only"]
        assert rm_only.rm_weight == 1 and not (rm_only.task_weight or rm_only.env_assertion_weight
                                               or rm_only.action_weight or rm_only.malformed_call_penalty)
        assert {by_arm[a].mixing for a in arms[2:]} == {"weighted", "gated", "multiplicative"}
        assert {by_arm[a].rm_weight for a in arms[2:]} == {0.5}
    # GRPO on the laptop learning task from an SFT warm start: both the start and the RM are placeholders
    tiny = load_sweep(Path(REPO_ROOT) / "configs" / "sweeps" / "reward_mixing_tiny.yaml")
    (tmp_path / "runs" / "rm_learn" / "model").mkdir(parents=True)
    with pytest.raises(SweepError, match=r"model\.name 'runs/bench_sel0/seed0/verifier/sft' is not a folder"):
        plan(tiny)
    runs = plan(tiny, check_paths=False)
    assert tiny.base_config.name == "learn_tiny.yaml" and len(runs) == 15
    by_arm = {r.arm.name: r.config.reward for r in runs if r.seed == 0}
    assert list(by_arm) == ["checks_only", "rm_only", "gated", "weighted", "multiplicative"]
    assert by_arm["rm_only"].task_weight == 0 and by_arm["rm_only"].rm_weight == 1
    assert by_arm["gated"].mixing == "gated" and by_arm["checks_only"].rm_weight == 0


# ------------------------------------------------------------------------------- running, resuming, results

def test_failed_run_is_reported_not_fatal_and_a_rerun_retries_only_it(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, ALGOS))
    fake = FakeTrain(fail={"algorithm=rloo seed1"})
    results = run_sweep(sweep, SequentialRunner(fake))
    # Seed-major order: both arms' seed 0 first.
    assert [c[0] for c in fake.calls] == ["algorithm=grpo seed0", "algorithm=rloo seed0", "algorithm=grpo seed1",
                                          "algorithm=rloo seed1"]
    status = {r.run.label: r.status for r in results}
    assert status == {"algorithm=grpo seed0": "finished", "algorithm=grpo seed1": "finished",
                      "algorithm=rloo seed0": "finished", "algorithm=rloo seed1": "failed"}
    out = tmp_path / "out"
    failed = [r for r in rows(out / "results.csv") if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["arm"] == "algorithm=rloo" and failed[0]["seed"] == "1"
    assert "RuntimeError: boom in algorithm=rloo seed1" in failed[0]["error"] and "exit status 1" in failed[0]["error"]
    assert failed[0]["steps"] == "1"  # what it logged before crashing
    md = (out / "results.md").read_text()
    assert "| algorithm=rloo | rloo | 1/2 |" in md
    assert "### algorithm=rloo seed1: failed" in md and "RuntimeError: boom" in md
    assert not (out / "algorithm=rloo" / "seed1" / DONE_FILE).exists()
    done_mtime = (out / "algorithm=grpo" / "seed0" / DONE_FILE).stat().st_mtime_ns

    fake2 = FakeTrain()
    results = run_sweep(load_sweep(sweep.path), SequentialRunner(fake2))
    assert fake2.calls == [("algorithm=rloo seed1", True)]  # only the failed run, continuing its run dir
    assert all(r.status == "finished" for r in results)
    assert sorted(r.run.label for r in results if r.skipped) == ["algorithm=grpo seed0", "algorithm=grpo seed1",
                                                                 "algorithm=rloo seed0"]
    assert (out / "algorithm=grpo" / "seed0" / DONE_FILE).stat().st_mtime_ns == done_mtime
    assert "Not finished" not in (out / "results.md").read_text()

    fake3 = FakeTrain()
    run_sweep(load_sweep(sweep.path), SequentialRunner(fake3))
    assert fake3.calls == []  # everything finished: nothing runs, results are rewritten


def test_aggregates_read_metrics_jsonl(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, ALGOS))
    runs = plan(sweep)
    run_sweep(sweep, SequentialRunner(FakeTrain()), runs)
    out = tmp_path / "out"
    # A resumed run re-logs steps after its checkpoint: the last write of a step counts.
    with open(runs[0].run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 2, "reward/mean": 0.3, "success_rate": 0.0}) + "\n")
        fh.write('{"step": 3, "reward/me')  # torn last line of a killed run: ignored
    run_sweep(load_sweep(sweep.path), SequentialRunner(FakeTrain()))

    table = {(r["arm"], r["seed"]): r for r in rows(out / "results.csv")}
    assert len(table) == 4 and all(r["status"] == "finished" and r["steps"] == "2" for r in table.values())
    assert float(table[("algorithm=grpo", "0")]["reward/mean"]) == pytest.approx(0.3)
    assert float(table[("algorithm=grpo", "1")]["reward/mean"]) == pytest.approx(0.21)
    assert float(table[("algorithm=rloo", "1")]["reward/mean"]) == pytest.approx(0.71)
    assert table[("algorithm=rloo", "1")]["algorithm.name"] == "rloo"
    assert table[("algorithm=grpo", "0")]["episodes"] == ""  # the appended row had no such key
    assert float(table[("algorithm=rloo", "0")]["time/step"]) == 1.0  # other final metrics are columns too
    md = (out / "results.md").read_text()
    # grpo: reward/mean 0.3 and 0.21 -> mean 0.255, std 0.06364; success 0.0 and 0.5 -> 0.25 +- 0.3536
    assert "| algorithm=grpo | grpo | 2/2 | 0.255 ± 0.06364 | 0.25 ± 0.3536 |" in md
    assert "| algorithm=rloo | rloo | 2/2 | 0.705 ± 0.007071 | 0.25 ± 0.3536 |" in md
    for name in ("compare.png", "algorithm=grpo.png", "algorithm=rloo.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan_file = json.loads((out / "sweep.json").read_text())
    assert [a["name"] for a in plan_file["arms"]] == ["algorithm=grpo", "algorithm=rloo"]


def test_smoothed_curves_average_a_window_of_steps_not_of_logged_values():
    curve = [{"step": s, "success_rate": float(s % 2)} for s in range(1, 9)]  # 1, 0, 1, 0, ...
    for s in (4, 8):
        curve[s - 1]["eval/success"] = s / 10  # logged every 4 steps
    assert _series(curve, "success_rate") == [(s, float(s % 2)) for s in range(1, 9)]
    smoothed = dict(_series(curve, "success_rate", smooth=2))
    assert smoothed[1] == 1.0 and all(smoothed[s] == 0.5 for s in range(2, 9))  # step 1 has no step 0 beside it
    assert _series(curve, "eval/success", smooth=4) == [(4, 0.4), (8, 0.8)]  # one value in each 4-step window
    assert _series(curve, "eval/success", smooth=5) == [(4, 0.4), (8, pytest.approx(0.6))]
    other = [{"step": s, "success_rate": 1.0} for s in range(1, 9)]
    steps, mean, std = _mean_curve([curve, other], "success_rate", smooth=2)
    assert steps == list(range(1, 9)) and mean[0] == 1.0 and mean[1:] == [0.75] * 7
    assert std[1] == pytest.approx(0.3536, abs=1e-4)


def test_list_mode_runs_named_arms_each_setting_its_own_keys(tmp_path):
    """An ablation's arms are not a grid (checks_only, rm_only, gated, ...): mode list names each arm and the keys
    it sets; the other keys stay as the base config and overrides have them."""
    sweep = load_sweep(write_sweep(tmp_path, """\
        mode: list
        overrides: [train.steps=2]
        arms:
          baseline:
          rloo: {algorithm.name: rloo}
          rloo_fast:
            algorithm.name: rloo
            learner.lr: 0.002
        metrics: [reward/mean]
        """))
    runs = plan(sweep)
    assert [r.label for r in runs] == ["baseline seed0", "rloo seed0", "rloo_fast seed0"]
    base_lr = runs[0].config.learner.lr  # configs/test_tiny.yaml's
    assert base_lr != 0.002
    assert [(r.config.algorithm.name, r.config.learner.lr) for r in runs] == [
        ("grpo", base_lr), ("rloo", base_lr), ("rloo", 0.002)]
    assert runs[2].overrides[:3] == ["train.steps=2", "algorithm.name=rloo", "learner.lr=0.002"]

    run_sweep(sweep, SequentialRunner(FakeTrain()), runs)
    out = tmp_path / "out"
    table = {r["arm"]: r for r in rows(out / "results.csv")}
    assert {a: (r["algorithm.name"], r["learner.lr"]) for a, r in table.items()} == {
        "baseline": ("", ""), "rloo": ("rloo", ""), "rloo_fast": ("rloo", "0.002")}
    md = (out / "results.md").read_text()
    assert "| arm | algorithm.name | learner.lr | seeds | reward/mean |" in md
    assert "| baseline | - | - | 1/1 | 0.2 |" in md and "| rloo_fast | rloo | 0.002 | 1/1 | 0.7 |" in md
    assert (out / "rloo_fast" / "seed0" / DONE_FILE).is_file()


def test_a_changed_config_is_refused_rather_than_skipped(tmp_path):
    path = write_sweep(tmp_path, ALGOS)
    run_sweep(load_sweep(path), SequentialRunner(FakeTrain()))
    path.write_text(path.read_text().replace("train.steps=2", "train.steps=3"))
    with pytest.raises(SweepError, match=r"another config \(train.steps: 2 -> 3\).*delete .*seed0 to run it again"):
        plan(load_sweep(path))


def test_local_runner_runs_the_trainer_as_a_subprocess(tmp_path, monkeypatch):
    """The real LocalTrain path (command line, rl.config's parsing of every override, log capture, exit status,
    --resume on a retry) with a stand-in module for rl.train."""
    (tmp_path / "fake_train.py").write_text(textwrap.dedent("""\
        import os, sys
        from rl.config import parse_cli
        from rl.run_dir import RunDir
        args = [a for a in sys.argv[1:] if a != "--resume"]
        cfg, _ = parse_cli(args)
        print("ARGV", sys.argv[1:], flush=True)
        rd = RunDir(cfg, resume="--resume" in sys.argv)
        rd.log_metrics(0, {"eval/success": 0.0, "eval/tasks": 2})
        rd.log_metrics(1, {"reward/mean": 0.25, "success_rate": 1.0, "eval/success": 0.5, "eval/tasks": 2})
        rd.close()
        print("held-out success (test, 2 tasks): before 0.90 -> after 0.90")  # printed only: never parsed
        if cfg.algorithm.name == os.environ.get("FAKE_FAIL"):
            sys.exit("fake trainer: failing on purpose")
        """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("FAKE_FAIL", "rloo")
    path = write_sweep(tmp_path, ALGOS.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "metrics: [reward/mean, success_rate]", "metrics: [reward/mean, heldout/success_after]"))
    results = run_sweep(load_sweep(path), SequentialRunner(LocalTrain("fake_train")))
    assert {r.run.label: r.status for r in results} == {"algorithm=grpo seed0": "finished",
                                                        "algorithm=rloo seed0": "failed"}
    out = tmp_path / "out"
    log = (out / "algorithm=rloo" / "seed0.log").read_text()
    assert "fake_train --config" in log and "ARGV" in log and "--resume" not in log.split("ARGV")[1]
    failed = [r for r in results if r.status == "failed"][0]
    assert "fake trainer: failing on purpose" in failed.error
    table = {r["arm"]: r for r in rows(out / "results.csv")}
    assert table["algorithm=grpo"]["heldout/success_after"] == "0.5"  # read from metrics.jsonl
    assert table["algorithm=grpo"]["heldout/success_before"] == "0.0"

    monkeypatch.setenv("FAKE_FAIL", "")
    results = run_sweep(load_sweep(path), SequentialRunner(LocalTrain("fake_train")))
    assert all(r.status == "finished" for r in results)
    attempts = (out / "algorithm=rloo" / "seed0.log").read_text().split("\n=== ")
    assert len(attempts) == 3 and "--resume" in attempts[-1]  # the retry continued the run dir
    assert "| algorithm=rloo | rloo | 1/1 | 0.25 | 0.5 |" in (out / "results.md").read_text()


def test_cli_dry_run_and_errors(tmp_path, capsys):
    path = write_sweep(tmp_path, ALGOS)
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "algorithm=rloo seed1 [to run]: python -m rl.train --config" in out and "4 runs (2 arms x 2 seeds)" in out
    assert not (tmp_path / "out").exists()
    bad = write_sweep(tmp_path, "params:\n  algorithm.nme: [grpo]\n", "bad.yaml")
    assert main(["--config", str(bad)]) == 2
    assert "bad.yaml:4: param 'algorithm.nme'" in capsys.readouterr().err


# --------------------------------------------------------------------------- slow: Ray jobs, the real trainer

@pytest.mark.slow
def test_sweep_of_real_training_runs_as_ray_jobs_and_resumes(tmp_path):
    from tests.test_ray_job import LocalHead  # a Ray head of this test's own: ports, token, clean stop

    head = LocalHead()
    try:
        # One learner rank: a run then needs 2 of the head's 4 CPUs, so both jobs run at once (and start faster).
        path = write_sweep(tmp_path, """\
            overrides: [train.steps=1, learner.num_ranks=1]
            params:
              algorithm.name: [grpo, rloo]
            """)
        cmd = [sys.executable, "-m", "rl.tools.sweep", "--config", str(path), "--address", head.dashboard,
               "--max-concurrent", "2", "--poll-s", "2"]
        t0 = time.monotonic()
        first = subprocess.run(cmd, env=head.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
        took = time.monotonic() - t0
        out = tmp_path / "out"
        logs = [p.read_text() for p in sorted(out.glob("*/seed0.log"))]
        assert first.returncode == 0, (f"{first.stdout}\n{first.stderr[-3000:]}\n--- run logs ---\n"
                                       + "\n".join(log[-3000:] for log in logs))
        print(f"2-arm sweep as Ray jobs: {took:.0f} s")
        table = rows(out / "results.csv")
        assert [(r["arm"], r["status"], r["steps"]) for r in table] == [("algorithm=grpo", "finished", "1"),
                                                                        ("algorithm=rloo", "finished", "1")]
        assert all(r["reward/mean"] != "" for r in table)
        md = (out / "results.md").read_text()
        assert "| algorithm=grpo | grpo | 1/1 |" in md and "| algorithm=rloo | rloo | 1/1 |" in md
        for name in ("compare.png", "algorithm=grpo.png", "algorithm=rloo.png"):
            assert (out / "plots" / name).stat().st_size > 1000
        assert len(logs) == 2 and all("Connecting to existing Ray cluster" in log for log in logs), \
            "the jobs' drivers did not join the head (ray.address=auto)"
        assert f"results: {out / 'results.md'}" in first.stdout

        def jobs() -> int:  # our jobs in the head's job list
            return head.ray("job", "list", "--address", head.dashboard).stdout.count("sweep-algorithm_")

        before = jobs()
        assert before > 0
        second = subprocess.run(cmd, env=head.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "2 finished (2 skipped as already done), 0 failed" in second.stdout
        assert jobs() == before, "the re-run submitted jobs for finished runs"

        # A job that fails (its model folder holds no model; a missing folder would stop the sweep before any job):
        # reported with the job's log, not fatal.
        (tmp_path / "empty").mkdir()
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"base_config: {TINY}\nsweep_dir: {tmp_path / 'bad'}\n"
                       f"params:\n  model.name: [{tmp_path / 'empty'}]\n")
        third = subprocess.run([*cmd[:4], str(bad), *cmd[5:]], env=head.env, cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=180)
        assert third.returncode == 1 and "0 finished (0 skipped as already done), 1 failed" in third.stdout, \
            third.stdout + third.stderr[-3000:]
        [row] = rows(tmp_path / "bad" / "results.csv")
        assert row["status"] == "failed" and "FAILED" in row["error"], row
        assert "is a directory but not a model folder" in row["error"], row["error"]
    finally:
        left = head.close()
    assert not left, f"processes of the test's Ray head survived: {sorted(left)}"


def test_api_keys_are_written_nowhere(tmp_path, monkeypatch):
    """A key on the command line reaches the trainer, but no file a sweep or a run writes holds it, and a Ray job
    gets it as an environment variable instead of in its (stored, shown) entrypoint."""
    from rl.tools.sweep.runners import JobRunner

    secret = "sk-test-0123456789"
    (tmp_path / "quiet_train.py").write_text(textwrap.dedent("""\
        import sys
        from rl.config import parse_cli
        from rl.run_dir import RunDir
        cfg, _ = parse_cli([a for a in sys.argv[1:] if a != "--resume"])
        assert cfg.judge.api_key.startswith("sk-test-")  # the trainer does get it
        rd = RunDir(cfg)
        rd.log_metrics(1, {"reward/mean": 0.25})
        rd.close()
        """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    path = write_sweep(tmp_path, ALGOS.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "overrides: [train.steps=2]", f"overrides: [train.steps=2, judge.model=openai/j, judge.api_key={secret}]"))
    results = run_sweep(load_sweep(path), SequentialRunner(LocalTrain("quiet_train")))
    assert all(r.status == "finished" for r in results), [r.error for r in results]
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"sweep.json", "meta.json", "config.yaml", "seed0.log"} <= {p.name for p in written}
    assert not [p for p in written if secret in p.read_text(errors="replace")]

    run = plan(load_sweep(path))[0]
    jobs = JobRunner.__new__(JobRunner)  # entrypoint() needs no cluster
    assert secret not in jobs.entrypoint(run) and "judge.model=openai/j" in jobs.entrypoint(run)
    monkeypatch.setenv("TELERL_JUDGE_API_KEY", secret)  # what the job's runtime_env sets
    from rl.config import load_config

    assert load_config(None, ["judge.model=openai/j"]).judge.api_key == secret
    assert load_config(None, ["judge.api_key=sk-other"]).judge.api_key == "sk-other"  # an explicit key wins
