"""rl.rft's recipe: which policy plays each stage, what each round fine-tunes on, and a re-run that finishes only
what is missing. The learner and the engines here are stand-ins that record their calls (the real ones run the same
stages in tests/test_train_e2e.py's rl.rft test); the evaluations are rl.evaluate's own code."""
import json
from pathlib import Path

import pytest

from rl.config import load_config
from rl.eval_report import EpisodeOutcome
from rl.rft import Recipe, RejectionSampling, newest_policy
from tests.conftest import REPO_ROOT

OVERRIDES = ["train.eval_split=test", "train.eval_tasks=2"]  # 20 training tasks of the small split, 2 held out


class Learner:
    def __init__(self, log):
        self.log = log

    def train_step(self, batch, demo):
        self.log.append(("step", len(demo.input_ids)))
        self.log.append(("rows", tuple(len(ids) for ids in demo.input_ids)))  # which rows, in the order shuffled
        return {"demo_nll": 1.0, "grad_norm": 0.5}

    def new_schedule(self, lr, steps):
        self.log.append(("schedule", lr, steps))

    def save_hf(self, path, extra):
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
        self.log.append(("save", Path(path).name))

    def state_dict_ref(self):
        return "weights"

    def logprobs(self, batch):
        return [[0.0] * len(batch.input_ids[0])]


class Engines:
    """Policy version v passes the first 5 * v training tasks (a better policy each round), no held-out one."""

    def __init__(self, log, version, train_ids):
        self.log, self.version, self.train_ids = log, version, train_ids

    def load_weights(self, weights, version):
        self.version = version
        self.log.append(("load", version))

    def sequence_logprobs(self, ids):
        return [[0.0] * len(ids)]

    def play(self, jobs, greedy, concurrency):
        self.log.append(("play", self.version, greedy, len(jobs)))
        for task, trial in jobs:
            passed = task["id"] in self.train_ids[:5 * self.version]
            yield EpisodeOutcome(task["id"], trial, float(passed), passed, "agent_stop",
                                 messages=[], chat_messages=[{"role": "assistant", "content": str(self.version)}])


def _job(tmp_path, rounds, log, monkeypatch, version=0, extra=(), **recipe):
    seen = []

    def own_rows(cfg, tokenizer, teacher, rollouts, limit, per_task, prefer):
        assert prefer == recipe.get("prefer", "first")  # which of a task's passes: the recipe's choice
        seen.append(list(rollouts))
        passed = [row for r in rollouts for row in map(json.loads, (Path(r) / "episodes.jsonl").open())
                  if row["success"]]
        if not passed:
            raise ValueError("no passed rollouts episode")
        return [([1, 2, 3], [0, 1, 1])] * len(passed)

    monkeypatch.setattr("rl.demonstrations.demonstration_rows", own_rows)
    cfg = load_config(f"{REPO_ROOT}/configs/test_tiny.yaml", [*OVERRIDES, *extra])
    job = RejectionSampling(cfg, Recipe(sft_limit=3, sft_epochs=2, sft_batch=2, rounds=rounds, trials=2, per_task=2,
                                        epochs=1, batch=4, lr=5e-4, **recipe), tmp_path)
    job.learner, job.engines, job.tokenizer = Learner(log), Engines(log, version, [t.id for t in job.train_tasks]), None
    job.engines_hold = newest_policy(tmp_path, rounds)
    job.warm = [([1, 2], [0, 1])] * 3
    return job, seen


def test_each_round_samples_the_newest_policy_and_fine_tunes_on_every_success_so_far(tmp_path, monkeypatch):
    log = []
    job, seen = _job(tmp_path, 2, log, monkeypatch)
    summary = job._stages()
    plays = [e for e in log if e[0] == "play"]
    # (policy version, greedy, episodes): held-out after SFT; each round samples 20 tasks x 2, then the held-out
    assert plays == [("play", 1, True, 2), ("play", 1, False, 40), ("play", 2, True, 2), ("play", 2, False, 40),
                     ("play", 3, True, 2)]
    assert seen == [[str(tmp_path / "sample1")], [str(tmp_path / "sample1"), str(tmp_path / "sample2")]]
    # SFT: 3 conversations x 2 epochs in batches of 2 (4 steps), its own schedule; each round a fresh schedule
    # sized to the warm start's 3 plus the successes so far (policy 1 passes 5 tasks twice: 10; policy 2 20 more)
    schedules = [e for e in log if e[0] == "schedule"]
    assert schedules == [("schedule", 5e-4, 4), ("schedule", 5e-4, 9)]  # ceil(13 / 4), ceil(33 / 4)
    assert [e for e in log if e[0] in ("save", "load")] == [("save", "sft"), ("load", 1), ("save", "rft1"),
                                                            ("load", 2), ("save", "rft2"), ("load", 3)]
    assert [r["train_success"] for r in summary["rft"]] == [0.25, 0.5]
    assert json.loads((tmp_path / "summary.json").read_text())["rft"][1]["round"] == 2
    for stage in ("eval_sft", "sample1", "rft1", "eval_rft1", "sample2", "eval_rft2"):
        assert (tmp_path / stage).is_dir(), stage
    assert json.loads((tmp_path / "eval_rft2" / "report.json").read_text())["tasks"] == 2


def test_the_recipes_preference_among_passes_reaches_the_selection(tmp_path, monkeypatch):
    job, seen = _job(tmp_path, 1, [], monkeypatch, prefer="shortest")  # own_rows asserts what it is given
    job._stages()
    assert seen == [[str(tmp_path / "sample1")]]


def test_a_rerun_finishes_only_what_is_missing(tmp_path, monkeypatch):
    log = []
    _job(tmp_path, 1, log, monkeypatch)[0]._stages()
    # one more round: starts from rft1 (the engines and the learner hold it), plays only round 2's stages
    log.clear()
    job, seen = _job(tmp_path, 2, log, monkeypatch, version=2)
    assert job.engines_hold == tmp_path / "rft1"
    summary = job._stages()
    assert [e for e in log if e[0] == "play"] == [("play", 2, False, 40), ("play", 3, True, 2)]
    assert [e[1] for e in log if e[0] == "save"] == ["rft2"] and len(summary["rft"]) == 2
    assert set(summary["fine_tuning"]) == {"sft", "rft1", "rft2"}  # the first run's records are kept
    # a half-written evaluation of an earlier policy cannot be finished by the engines' newer one
    (tmp_path / "eval_rft1" / "report.json").unlink()
    job, _ = _job(tmp_path, 2, log, monkeypatch, version=3)
    with pytest.raises(ValueError, match="eval_rft1 is unfinished, but a later policy"):
        job._stages()


def test_a_resumed_recipe_shuffles_a_round_as_an_unbroken_one(tmp_path, monkeypatch):
    def round_2_batches(log):
        saves = [i for i, e in enumerate(log) if e[0] == "save"]
        return [e[1] for e in log[saves[-2]:saves[-1]] if e[0] == "rows"]

    unbroken = []
    _job(tmp_path / "a", 2, unbroken, monkeypatch)[0]._stages()
    _job(tmp_path / "b", 1, [], monkeypatch)[0]._stages()
    resumed = []
    _job(tmp_path / "b", 2, resumed, monkeypatch, version=2)[0]._stages()
    resumed = [("save", "rft1")] + resumed  # round 2's steps come after the first run's last save
    assert round_2_batches(resumed) == round_2_batches(unbroken)
    assert len(set(round_2_batches(unbroken))) > 1  # warm-start (2-token) and own (3-token) rows are mixed differently


def test_an_order_seed_reorders_only_the_rounds_fine_tuning(tmp_path, monkeypatch):
    def stages(log):
        """The SFT's batches, the plays, and round 1's batches."""
        first_save = next(i for i, e in enumerate(log) if e == ("save", "sft"))
        rows = [(i, e[1]) for i, e in enumerate(log) if e[0] == "rows"]
        return ([r for i, r in rows if i < first_save], [e for e in log if e[0] == "play"],
                [r for i, r in rows if i > first_save])

    runs = {}
    for name, order in (("default", None), ("again", None), ("order1", 1), ("order2", 2)):
        log = []
        job, _ = _job(tmp_path / name, 1, log, monkeypatch, order_seed=order)
        job._stages()
        runs[name] = stages(log)
    assert runs["again"] == runs["default"]  # the config's seed orders the round when no order seed is given
    for name in ("order1", "order2"):
        sft, plays, round1 = runs[name]
        assert (sft, plays) == runs["default"][:2]  # the warm start and the samples are untouched
        rows = sorted(n for batch in round1 for n in batch)
        assert rows == sorted(n for batch in runs["default"][2] for n in batch)  # the same rows...
        assert round1 != runs["default"][2]  # ...in another order
    assert runs["order1"][2] != runs["order2"][2]
    assert json.loads((tmp_path / "order1" / "summary.json").read_text())["recipe"]["order_seed"] == 1


def test_a_round_without_a_success_fine_tunes_on_the_warm_start_alone(tmp_path, monkeypatch, capsys):
    log = []
    job, _ = _job(tmp_path, 1, log, monkeypatch)
    job.engines.play = lambda jobs, greedy, concurrency: (
        EpisodeOutcome(t["id"], k, 0.0, False, "agent_stop", messages=[], chat_messages=[]) for t, k in jobs)
    summary = job._stages()
    assert "fine-tuning on the warm start's conversations alone" in capsys.readouterr().out
    assert ("schedule", 5e-4, 1) in log and summary["rft"][0]["train_success"] == 0.0


def test_validation_tasks_are_evaluated_after_every_stage_and_never_sampled(tmp_path, monkeypatch):
    log = []
    job, _ = _job(tmp_path, 1, log, monkeypatch, extra=["train.validation_tasks=4"])
    summary = job._stages()
    # 16 training tasks sampled twice; the 4 set aside played greedy after SFT and after the round, like the held-out
    assert [e[2:] for e in log if e[0] == "play"] == [(True, 2), (True, 4), (False, 32), (True, 2), (True, 4)]
    sampled = {json.loads(line)["task_id"] for line in (tmp_path / "sample1" / "episodes.jsonl").open()}
    validation = {json.loads(line)["task_id"] for line in (tmp_path / "val_rft1" / "episodes.jsonl").open()}
    assert len(validation) == 4 and not sampled & validation
    assert summary["before_validation"]["eval/tasks"] == 4 and summary["rft"][0]["validation"]["eval/tasks"] == 4


def test_sample_tasks_draws_the_same_training_tasks_every_round(tmp_path, monkeypatch):
    log = []
    job, _ = _job(tmp_path, 2, log, monkeypatch, sample_tasks=6)
    job._stages()
    assert [e[2:] for e in log if e[0] == "play" and not e[2]] == [(False, 12), (False, 12)]  # 6 tasks x 2 trials
    drawn = [sorted({json.loads(line)["task_id"] for line in (tmp_path / f"sample{r}" / "episodes.jsonl").open()})
             for r in (1, 2)]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 6 and set(drawn[0]) <= {t.id for t in job.train_tasks}


def test_unsolved_trials_resample_only_the_tasks_no_sample_solved(tmp_path, monkeypatch):
    """--unsolved-trials: after a round's samples, the tasks none of them passed are sampled k times more by the same
    policy (retry<r>/), and the round imitates the successes of both folders. Here the retry's draw passes 3 of the
    15 unsolved tasks."""
    log = []
    job, seen = _job(tmp_path, 1, log, monkeypatch, unsolved_trials=3)
    first_play = job.engines.play
    train_ids = [t.id for t in job.train_tasks]

    def play(jobs, greedy, concurrency):
        if len(jobs) == 15 * 3:  # the retry: the 15 tasks policy 1 does not pass, 3 trials each
            log.append(("play", job.engines.version, greedy, len(jobs)))
            return (EpisodeOutcome(t["id"], k, 1.0, True, "agent_stop", messages=[], chat_messages=[])
                    if t["id"] in train_ids[5:8] and k == 2 else
                    EpisodeOutcome(t["id"], k, 0.0, False, "agent_stop", messages=[], chat_messages=[])
                    for t, k in jobs)
        return first_play(jobs, greedy, concurrency)

    job.engines.play = play
    summary = job._stages()
    # held-out after SFT; 20 tasks x 2; the 15 unsolved x 3 by the same policy (version 1); round 1's held-out
    assert [e[1:] for e in log if e[0] == "play"] == [(1, True, 2), (1, False, 40), (1, False, 45), (2, True, 2)]
    retried = {json.loads(line)["task_id"] for line in (tmp_path / "retry1" / "episodes.jsonl").open()}
    assert retried == set(train_ids[5:])
    assert seen == [[str(tmp_path / "sample1"), str(tmp_path / "retry1")]]
    # the fine-tuning imitates 5 tasks x 2 passes + 3 retry passes, beside the warm start's 3
    assert ("schedule", 5e-4, 4) in log  # ceil(16 / 4)
    assert summary["rft"][0]["unsolved"] == 15 and summary["rft"][0]["unsolved_then_solved"] == 3
    assert summary["rft"][0]["train_success"] == 0.25  # the round's own samples, as without retries


def test_no_retry_when_every_sampled_task_was_solved(tmp_path, monkeypatch):
    log = []
    job, seen = _job(tmp_path, 1, log, monkeypatch, unsolved_trials=3)
    job.engines.play = lambda jobs, greedy, concurrency: (  # every episode passes
        EpisodeOutcome(t["id"], k, 1.0, True, "agent_stop", messages=[], chat_messages=[]) for t, k in jobs)
    summary = job._stages()
    assert not (tmp_path / "retry1").exists() and seen == [[str(tmp_path / "sample1")]]
    assert summary["rft"][0]["unsolved"] == 0 and summary["rft"][0]["unsolved_then_solved"] == 0


@pytest.mark.parametrize("min_reward, chosen, passing", [(None, 20, 5), (1.0, 5, 5)])
def test_select_reward_imitates_what_the_reward_section_ranks_best(tmp_path, monkeypatch, min_reward, chosen, passing):
    """--select reward (tau2's reward alone here): without a floor every sampled task gives its best conversation,
    passed or not; at the pass level the choice is the verifier's. The summary says how much of it tau2 passes."""
    from rl.demonstrations import Demonstrations

    log, imitated = [], []
    job, _ = _job(tmp_path, 1, log, monkeypatch, select="reward", min_reward=min_reward)

    def rows(cfg, tokenizer, teacher, rollouts, limit, per_task, prefer):
        assert isinstance(rollouts, Demonstrations)
        imitated.append(rollouts.conversations)
        return [([1, 2, 3], [0, 1, 1])] * len(rollouts.conversations)

    monkeypatch.setattr("rl.demonstrations.demonstration_rows", rows)
    summary = job._stages()
    # a policy's samples of a task are alike here: one distinct conversation a task; policy 1 passes 5 of 20 tasks
    assert len(imitated[0]) == chosen
    record = summary["selection"]["rft1"]
    assert (record["chosen"], record["chosen_passing"], record["tasks_chosen_without_a_pass"]) == (
        chosen, passing, chosen - passing)
    assert ("schedule", 5e-4, -(-(3 + chosen) // 4)) in log  # the warm start's 3 plus what was chosen
    assert summary["fine_tuning"]["rft1"]["own"] == chosen
    assert json.loads((tmp_path / "summary.json").read_text())["selection"] == summary["selection"]


def test_selection_flags_are_checked_before_anything_starts(tmp_path, capsys):
    from rl.rft import main

    config = f"{REPO_ROOT}/configs/learn_tiny.yaml"  # partial credit and a format penalty in its reward section
    assert main(["--config", config, "--out", str(tmp_path), "--min-reward", "1"]) == 2
    assert "--min-reward needs --select reward" in capsys.readouterr().err
    assert main(["--config", config, "--out", str(tmp_path), "--select", "reward"]) == 2
    assert "set reward.env_assertion_weight=0.25, reward.action_weight=0.25" in capsys.readouterr().err
    assert main(["--config", config, "--out", str(tmp_path), "--select", "reward", "--prefer", "shortest"]) == 2
    assert "--prefer chooses among tau2's passes (--select verifier)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_recipe_finished_before_a_flag_existed_is_done(tmp_path, capsys):
    from dataclasses import asdict

    recipe = Recipe(rounds=1)
    older = {k: v for k, v in asdict(recipe).items() if k not in ("select", "min_reward")}
    (tmp_path / "summary.json").write_text(json.dumps({"recipe": older, "rft": [{"round": 1}]}))
    job = RejectionSampling(load_config(f"{REPO_ROOT}/configs/test_tiny.yaml", OVERRIDES), recipe, tmp_path)
    assert job.run()["rft"] == [{"round": 1}] and "every stage is done" in capsys.readouterr().out


def test_held_out_success_is_required(tmp_path):
    cfg = load_config(f"{REPO_ROOT}/configs/test_tiny.yaml")  # train.eval_tasks: 0
    with pytest.raises(ValueError, match="train.eval_tasks > 0"):
        RejectionSampling(cfg, Recipe(), tmp_path)


@pytest.mark.slow
def test_rl_rft_runs_the_recipe_on_real_engines_and_learner(tmp_path, capsys):
    """rl.rft end to end on a local Ray cluster (the tiny random model, one float32 engine, two ZeRO-3 ranks): the warm
    start, its held-out evaluation, a round that samples the training tasks (no success: the round fine-tunes on the
    warm start alone, with a fresh schedule) and the round's evaluation; after each fine-tuning the engine scores a
    conversation exactly as the learner does (the weights were loaded in place); a re-run starts nothing."""
    from rl.rft import main
    from tests.conftest import cleanup_vllm_shm

    out = tmp_path / "rft"
    argv = ["--config", f"{REPO_ROOT}/configs/test_tiny.yaml", "--out", str(out), "--sft-limit", "4", "--sft-epochs",
            "6", "--rounds", "1", "--trials", "1", "--epochs", "1", *OVERRIDES]
    try:
        assert main(argv) == 0
    finally:
        cleanup_vllm_shm()
    summary = json.loads((out / "summary.json").read_text())
    # the learner moved (6 steps of SFT), and the engine runs exactly what it learned
    tuned = summary["fine_tuning"]
    assert set(tuned) == {"sft", "rft1"} and tuned["sft"]["steps"] == 6 and tuned["rft1"]["conversations"] == 4
    assert tuned["rft1"]["nll_first"] < tuned["sft"]["nll_first"] - 0.1, tuned
    assert max(t["engine_gap"] for t in tuned.values()) < 1e-3 and tuned["sft"]["engine_gap_mean"] < 1e-4, tuned
    assert summary["before"]["eval/tasks"] == 2 and len(summary["rft"]) == 1
    sampled = [json.loads(line) for line in (out / "sample1" / "episodes.jsonl").open()]
    assert len(sampled) == 20 and all(e["chat_messages"] and e["tokens"] > 0 for e in sampled)
    for policy in ("sft", "rft1"):
        assert (out / policy / "telerl.yaml").is_file() and any((out / policy).glob("*.safetensors"))
        assert json.loads((out / f"eval_{policy}" / "report.json").read_text())["episodes"] == 2
    assert (out / "eval_rft1" / "tau2_results.json").is_file()
    capsys.readouterr()
    assert main(argv) == 0 and "every stage is done" in capsys.readouterr().out  # finished: starts nothing
