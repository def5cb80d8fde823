"""Rejection-sampling fine-tuning (expert iteration: STaR, RAFT, ReST-EM; slime's SFT -> RFT) in one program: the
warm start, `--rounds` rounds of sampling the training tasks and fine-tuning on what tau2's evaluator passes, and a
held-out evaluation after each stage, with one Ray session, one ZeRO-3 learner and one set of vLLM engines for the
whole recipe (after each fine-tuning the learner's weights are loaded into the engines in place, as rl.train syncs
them; a program per stage spent ~70 s starting each).

    python -m rl.rft --config configs/learn_tiny.yaml --out runs/rft [--teacher expert|oracle] [--sft-limit 100]
                     [--sft-epochs 20] [--sft-lr 3e-3] [--sft-batch 4] [--rounds 1] [--trials 8]
                     [--sample-tasks 0] [--temperature 0.7] [--per-task 2] [--epochs 3] [--lr 1e-3] [--batch 8]
                     [--heldout-trials 0] [--unsolved-trials 0] [--prefer first|shortest]
                     [--select verifier|reward] [--min-reward X]
                     [key=value ...]

Stages, each a folder of --out:
    sft/            the warm start: SFT on --sft-limit of the teacher's conversations of the training tasks (drawn
                    with the config's seed; every one without a limit), an HF folder with its config (telerl.yaml)
    eval_sft/       its held-out greedy evaluation (rl.evaluate's files: episodes.jsonl, report.json, tau2 results)
    sampled_sft/    with --heldout-trials k: the held-out tasks sampled k times at --temperature (tau2's pass^k)
    sample<r>/      round r: every training task (or a fixed draw of --sample-tasks of them, the same each round:
                    what a larger model's sampling can afford on a CPU) sampled --trials times at --temperature
    retry<r>/       with --unsolved-trials k: the tasks no sample of round r solved, sampled k times more by the same
                    policy (difficulty-aware rejection sampling, DART: uniform sampling keeps mostly the easy tasks'
                    successes; the hard ones need more tries)
    rft<r>/         round r's policy: the newest policy fine-tuned (fresh optimizer, warm-up then decay) on the warm
                    start's conversations plus what --select chooses of every round's samples so far: tau2's passes
                    (verifier), or the reward section's best (reward; rl/rft_selection.py: the reward-mixing
                    ablation), at most --per-task distinct ones a task (of tau2's passes, the first found or,
                    with --prefer shortest, the shortest of every round's)
    eval_rft<r>/, sampled_rft<r>/   its held-out evaluations
    val_sft/, val_rft<r>/   with train.validation_tasks: greedy success on the training tasks set aside (to choose
                    settings by, never the held-out numbers)
    summary.json    per stage: held-out (per number of faults too) and validation success, the training tasks'
                    sampled success, each fine-tuning's steps, NLL and the engines' logprob gap to the learner; with
                    --select reward, what each round chose (how much of it tau2 passes, the reward model's audit)
The training, held-out and validation tasks are rl.train's (train.eval_split / train.eval_tasks,
train.validation_tasks): no held-out or validation task is ever sampled or imitated. A re-run with the same --out
skips the finished stages (a half-written evaluation is finished), starting the learner and the engines from the
newest policy folder.

The engines run in rollout.dtype for every stage, held-out evaluations included, so all stages are measured alike
(bfloat16 samples 1.3-1.45x faster than float32 on a CPU with bf16 instructions; bench_learning --rft-dtype).
Sampling draws from the engines' random streams (seed: the config's), so a re-run does not repeat the same samples.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rl.config import Config, parse_cli, redacted_yaml
from rl.demonstrations import PREFERENCES
from rl.rft_selection import SELECTIONS

STAGE_SUMMARY = "summary.json"


@dataclass(frozen=True)
class Recipe:
    """What rl.rft's flags set (documented in main)."""

    teacher: str = "expert"
    sft_limit: int | None = 100
    sft_epochs: int = 20
    sft_lr: float = 3e-3
    sft_batch: int = 4
    rounds: int = 1
    trials: int = 8
    sample_tasks: int | None = None
    temperature: float = 0.7
    per_task: int = 2
    epochs: int = 3
    lr: float = 1e-3
    batch: int = 8
    heldout_trials: int = 0
    select: str = "verifier"
    min_reward: float | None = None
    unsolved_trials: int = 0
    prefer: str = "first"
    order_seed: int | None = None


def policy_folders(out: Path, rounds: int) -> list[Path]:
    """The recipe's policies in order: the warm start, then each round's."""
    return [out / "sft", *(out / f"rft{r}" for r in range(1, rounds + 1))]


def newest_policy(out: Path, rounds: int) -> Path | None:
    """The last policy folder a previous run finished (a re-run starts there), None for a fresh start."""
    done = [p for p in policy_folders(out, rounds) if (p / "config.json").is_file()]
    return done[-1] if done else None


def report_metrics(report: dict) -> dict:
    """A greedy evaluation's report.json as rl.train's eval/ metrics (bench_learning reads both alike)."""
    return {"eval/success": report["pass_hat_k"]["1"], "eval/tasks": report["tasks"],
            **{f"eval/success/faults_{k}": v["success"] for k, v in report["by_faults"].items()}}


class RejectionSampling:
    """The recipe's actors (engines, learner) and its stages; run() plays every stage not finished yet."""

    def __init__(self, cfg: Config, recipe: Recipe, out: Path):
        from rl.runtime import split_tasks

        self.saved_cfg = cfg  # what a policy folder's telerl.yaml says (as rl.sft writes it)
        self.cfg = replace(cfg, rollout=replace(cfg.rollout, temperature=recipe.temperature))  # the engines' sampling
        self.recipe, self.out = recipe, out
        if recipe.select == "reward":
            from rl.rft_selection import check_reward_section

            check_reward_section(cfg.reward)  # before anything starts
        split = split_tasks(cfg)
        if not split.heldout:
            raise ValueError("rl.rft reports held-out success: set train.eval_tasks > 0 (and train.eval_split)")
        self.train_tasks, self.heldout = self._tasks(split.train), self._tasks(split.heldout)
        if recipe.sample_tasks:  # a fixed draw, the same every round and every seed
            from rl.evaluation import select_eval_tasks

            drawn = set(select_eval_tasks([t.id for t in self.train_tasks], recipe.sample_tasks))
            self.sampled_tasks = [t for t in self.train_tasks if t.id in drawn]
        else:
            self.sampled_tasks = self.train_tasks
        self.validation = self._tasks(split.validation)  # train.validation_tasks: never sampled or imitated
        self.concurrency = 64 * cfg.rollout.num_workers  # per engine: what keeps a CPU engine's batch full
        # policy -> its fine-tuning: steps, NLL per token first and last, and how far the engines' logprobs were from
        # the learner's after the load (kept across re-runs in summary.json)
        self.fine_tuning: dict[str, dict] = {}
        self.selection: dict[str, dict] = {}  # policy -> what --select reward chose for it (kept like fine_tuning)
        self.engines_hold: Path | None = None  # the policy folder whose weights the engines run (None: the base)

    @staticmethod
    def _tasks(tasks: dict[str, dict]):
        from envs.tau2_telecom import tau2_api as t2

        return [t2.Task.model_validate(t) for t in tasks.values()]

    def run(self) -> dict:
        from transformers import AutoTokenizer

        from actors.learner import LearnerGroup
        from rl.demonstrations import demonstration_rows
        from rl.model_agent import ModelAgent
        from rl.models import resolve_model
        from rl.runtime import init_ray
        from rl.sft import sft_settings, sft_steps

        cfg, recipe, out = self.cfg, self.recipe, self.out
        if (out / STAGE_SUMMARY).is_file():  # a finished recipe: nothing to start
            summary = json.loads((out / STAGE_SUMMARY).read_text())
            # a summary from before a flag existed holds that flag's default
            if {**asdict(Recipe()), **summary["recipe"]} == asdict(recipe) and len(summary["rft"]) == recipe.rounds:
                print(f"rft: every stage is done ({out / STAGE_SUMMARY})", flush=True)
                return summary
        init_ray(cfg, cfg.learner.num_ranks * cfg.learner.num_cpus + cfg.rollout.num_workers * cfg.rollout.num_cpus,
                 log_to_driver=False)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(redacted_yaml(self.saved_cfg))
        base = str(resolve_model(cfg.model.name, asdict(cfg.model.tiny)))
        start = self.engines_hold = newest_policy(out, recipe.rounds)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.engines = ModelAgent(cfg, str(start or base))
        self.learner = None
        try:
            with timed("start: engines, learner, the teacher's demonstrations"):
                self.engines.launch()  # the engines start while the demonstrations are played and the learner starts
                self.warm = demonstration_rows(cfg, self.tokenizer, recipe.teacher, None, recipe.sft_limit)
                self.learner = LearnerGroup(
                    sft_settings(cfg, str(start or base), recipe.sft_lr,
                                 sft_steps(len(self.warm), recipe.sft_epochs, recipe.sft_batch)),
                    num_ranks=cfg.learner.num_ranks, timeout_s=cfg.learner.timeout_s)
                self.engines.wait_started()
            return self._stages()
        finally:
            if self.learner is not None:
                self.learner.shutdown()
            self.engines.close()

    def _stages(self) -> dict:
        from rl.demonstrations import demonstration_rows
        from rl.sft import sft_steps

        recipe, out = self.recipe, self.out
        if (out / STAGE_SUMMARY).is_file():  # a re-run: the finished fine-tunings' records stay
            before = json.loads((out / STAGE_SUMMARY).read_text())
            self.fine_tuning, self.selection = before.get("fine_tuning", {}), before.get("selection", {})
        sft = out / "sft"
        if not (sft / "config.json").is_file():
            self._fine_tune(sft, self.warm, recipe.sft_epochs, recipe.sft_batch, random.Random(self.cfg.seed), "sft")
        summary = {"recipe": asdict(recipe), "before": self._greedy(sft, "eval"),
                   "before_sampled": self._heldout_sampled(sft), "before_validation": self._greedy(sft, "val"),
                   "rft": []}
        samples = []
        for r in range(1, recipe.rounds + 1):
            policy, sample = out / f"rft{r}", out / f"sample{r}"
            samples.append(str(sample))
            sampled = self._evaluate(sample, policy_folders(out, r)[-2], self.sampled_tasks, recipe.trials,
                                     greedy=False, what=f"round {r}: sampling the training tasks")
            retried, retry_record = self._sample_unsolved(r, sample) if recipe.unsolved_trials else (None, {})
            if retried:
                samples.append(str(retried))
            if not (policy / "config.json").is_file():
                try:
                    own = demonstration_rows(self.cfg, self.tokenizer, None, self._chosen(policy, samples), None,
                                             recipe.per_task, recipe.prefer)
                except ValueError as e:  # not one success yet (or none fits the context): the round still counts
                    print(f"rft: round {r}: {e}; fine-tuning on the warm start's conversations alone", flush=True)
                    own = []
                self.learner.new_schedule(recipe.lr, sft_steps(len(self.warm) + len(own), recipe.epochs, recipe.batch))
                # each stage's own shuffle (rl.sft's for the warm start), so a resumed recipe trains as an unbroken one
                order = self.cfg.seed if recipe.order_seed is None else f"{self.cfg.seed}/order {recipe.order_seed}"
                self._fine_tune(policy, self.warm + own, recipe.epochs, recipe.batch,
                                random.Random(f"{order}/round {r}"), f"round {r}")
                self.fine_tuning[policy.name]["own"] = len(own)  # the policy's own conversations among them
            summary["rft"].append({"round": r, "train_success": sampled["pass_hat_k"]["1"],
                                   **retry_record,
                                   "heldout": self._greedy(policy, "eval"),
                                   "heldout_sampled": self._heldout_sampled(policy),
                                   "validation": self._greedy(policy, "val")})
            self._write(summary)
        self._write(summary)
        return summary

    def _sample_unsolved(self, r: int, sample: Path) -> tuple[Path | None, dict]:
        """Round r's tasks that none of its samples solved, sampled --unsolved-trials times more by the same policy
        into retry<r>/ (None when every task was solved), and the record of it: how many tasks were left unsolved
        and how many of them the extra samples solved."""
        solved = passed_tasks(sample)
        unsolved = [t for t in self.sampled_tasks if t.id not in solved]
        if not unsolved:
            return None, {"unsolved": 0, "unsolved_then_solved": 0}
        retry = self.out / f"retry{r}"
        self._evaluate(retry, policy_folders(self.out, r)[-2], unsolved, self.recipe.unsolved_trials, greedy=False,
                       what=f"round {r}: sampling the {len(unsolved)} tasks no sample solved")
        return retry, {"unsolved": len(unsolved), "unsolved_then_solved": len(passed_tasks(retry))}

    def _chosen(self, policy: Path, samples: list[str]):
        """What `policy`'s fine-tuning imitates of the samples: their folders (tau2's passes are taken from them) or,
        with --select reward, the conversations the reward section ranks best."""
        if self.recipe.select == "verifier":
            return samples
        from rl.demonstrations import chosen_demonstrations
        from rl.rft_selection import select_by_reward

        with timed(f"{policy.name}: scoring {len(samples)} round(s) of samples with the reward section"):
            chosen, record = select_by_reward(self.cfg.reward, samples, self.recipe.per_task, self.recipe.min_reward,
                                              {t.id for t in self.train_tasks})
        self.selection[policy.name] = record
        audit = {k: f"{v:.3f}" for k, v in record.get("rm_vs_verifier", {}).items() if not k.startswith("pairs")}
        print(f"rft: {policy.name}: chose {record['chosen']} conversations of {record['tasks_chosen']} tasks, "
              f"{record['chosen_passing']} of them passed by tau2 ({record['tasks_chosen_without_a_pass']} tasks "
              f"with no pass); the reward model against tau2 on the samples: {audit or 'no reward model'}",
              flush=True)
        return chosen_demonstrations(self.cfg, chosen)

    def _write(self, summary: dict) -> None:
        summary["fine_tuning"] = self.fine_tuning
        if self.selection:
            summary["selection"] = self.selection
        (self.out / STAGE_SUMMARY).write_text(json.dumps(summary, indent=1))

    def _fine_tune(self, policy: Path, rows: list, epochs: int, batch: int, rng: random.Random, what: str) -> None:
        """Fine-tune the learner's weights on `rows`, save them as `policy`, load them into the engines."""
        from rl.models import MODEL_CONFIG_FILE
        from rl.sft import fit

        with timed(f"{what}: fine-tuning on {len(rows)} conversations"):
            nll = fit(self.learner, list(rows), epochs, batch, rng, desc=what)
            self.learner.save_hf(str(policy), {MODEL_CONFIG_FILE: redacted_yaml(self.saved_cfg)})
            # the engines' policy version: 1 the warm start, r + 1 round r's
            self.engines.load_weights(self.learner.state_dict_ref(),
                                      policy_folders(self.out, self.recipe.rounds).index(policy) + 1)
            self.engines_hold = policy
        worst, mean = self._engine_gap(rows[0][0][:512])
        self.fine_tuning[policy.name] = {"conversations": len(rows), "steps": len(nll), "nll_first": nll[0],
                                         "nll_last": nll[-1], "engine_gap": worst, "engine_gap_mean": mean}
        print(f"rft: {what}: {len(nll)} steps, NLL/token {nll[0]:.2f} -> {nll[-1]:.2f}; wrote {policy}; the engines "
              f"score a conversation {mean:.4f} nats/token from the learner on average, {worst:.4f} at most",
              flush=True)

    def _engine_gap(self, probe: list[int]) -> tuple[float, float]:
        """(largest, mean) per-token logprob difference between the learner and the engines on `probe`: a weight
        load that went wrong shows here as nats. bfloat16 engines differ by rounding, more on unlikely tokens as the
        policy sharpens (measured: at most 0.09 -> 0.28 over two rounds); float32 ~1e-6."""
        from rl.contracts import TrainBatch

        ours = self.learner.logprobs(TrainBatch(input_ids=[probe], loss_mask=[[1] * len(probe)]))[0]
        gaps = [abs(a - b) for theirs in self.engines.sequence_logprobs(probe) for a, b in zip(ours[1:], theirs[1:])]
        return max(gaps), sum(gaps) / len(gaps)

    def _greedy(self, policy: Path, which: str) -> dict | None:
        """Greedy success of `policy` on the held-out tasks (which="eval") or on the training tasks set aside
        (which="val", train.validation_tasks; None without them), as eval/ metrics."""
        tasks, name = (self.heldout, "held-out") if which == "eval" else (self.validation, "validation")
        if not tasks:
            return None
        return report_metrics(self._evaluate(self.out / f"{which}_{policy.name}", policy, tasks, 1, greedy=True,
                                             what=f"{policy.name}: {name}, greedy"))

    def _heldout_sampled(self, policy: Path) -> dict | None:
        k = self.recipe.heldout_trials
        if not k:
            return None
        return self._evaluate(self.out / f"sampled_{policy.name}", policy, self.heldout, k, greedy=False,
                              what=f"{policy.name}: held-out, sampled {k} times")["pass_hat_k"]

    def _evaluate(self, folder: Path, policy: Path, tasks: list, trials: int, greedy: bool, what: str) -> dict:
        """rl.evaluate's files for `policy` (the one the engines run) in `folder`, finished if half-written; its
        report."""
        from envs.tau2_telecom.session import SessionLimits
        from rl.evaluate import play_into, write_evaluation

        if (folder / "report.json").is_file():
            return json.loads((folder / "report.json").read_text())
        if policy != self.engines_hold:  # only when a folder was removed by hand after a later stage finished
            raise ValueError(f"{folder} is unfinished, but a later policy ({self.engines_hold}) exists: remove the "
                             f"folders after {policy.name} to redo them")
        cfg = self.cfg
        folder.mkdir(parents=True, exist_ok=True)
        with timed(what):
            play_into(folder / "episodes.jsonl", tasks, trials,
                      lambda pairs: self.engines.play([(t.model_dump(mode="json"), k) for t, k in pairs], greedy,
                                                      self.concurrency), what)
            report = write_evaluation(
                folder, tasks, trials, SessionLimits(cfg.env.max_turns, cfg.env.max_errors), cfg.seed,
                {"agent": f"{policy} (rl.rft)", "tasks_from": what,
                 "mode": cfg.env.mode, "user": cfg.env.user if cfg.env.mode == "dual" else "none (solo)",
                 "trials": trials, "policy": cfg.env.policy, "temperature": 0.0 if greedy else cfg.rollout.temperature})
        print(f"rft: {what}: pass^1 {report['pass_hat_k']['1']:.3f} over {report['tasks']} tasks", flush=True)
        return report


def passed_tasks(folder: Path) -> set[str]:
    """The ids of the tasks with at least one episode tau2 passed in an rl.evaluate folder."""
    from rl.run_dir import read_jsonl

    return {row["task_id"] for row in read_jsonl(folder / "episodes.jsonl") if row["success"]}


@contextmanager
def timed(what: str):
    """A line on stdout when a stage ends, with its wall time."""
    t0 = time.perf_counter()
    yield
    print(f"rft: {what}: {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    import ray

    def flags(p: argparse.ArgumentParser) -> None:
        d = Recipe()
        p.add_argument("--out", required=True, help="the recipe's folder (a re-run finishes what is missing)")
        p.add_argument("--teacher", choices=("expert", "oracle"), default=d.teacher,
                       help="who demonstrates the warm start's conversations")
        p.add_argument("--sft-limit", type=int, default=d.sft_limit,
                       help="the teacher's conversations in the warm start (0: every one)")
        p.add_argument("--sft-epochs", type=int, default=d.sft_epochs)
        p.add_argument("--sft-lr", type=float, default=d.sft_lr, help="the warm start's peak lr")
        p.add_argument("--sft-batch", type=int, default=d.sft_batch, help="the warm start's conversations per step")
        p.add_argument("--rounds", type=int, default=d.rounds, help="rejection-sampling rounds (0: the warm start)")
        p.add_argument("--trials", type=int, default=d.trials, help="samples of each training task per round")
        p.add_argument("--sample-tasks", type=int, default=0,
                       help="sample a fixed draw of this many training tasks each round (0: every one)")
        p.add_argument("--temperature", type=float, default=d.temperature, help="the rounds' sampling temperature")
        p.add_argument("--per-task", type=int, default=d.per_task, help="distinct successes kept per task")
        p.add_argument("--epochs", type=int, default=d.epochs, help="each round's passes over its data")
        p.add_argument("--lr", type=float, default=d.lr, help="each round's peak lr")
        p.add_argument("--batch", type=int, default=d.batch, help="each round's conversations per step")
        p.add_argument("--heldout-trials", type=int, default=d.heldout_trials,
                       help="also sample the held-out tasks this many times at --temperature after each stage "
                            "(tau2's pass^k: less noisy than one greedy pass)")
        p.add_argument("--unsolved-trials", type=int, default=d.unsolved_trials,
                       help="sample the tasks no sample of a round solved this many times more (0: no retry)")
        p.add_argument("--prefer", choices=PREFERENCES, default=d.prefer,
                       help="which of a task's passes --per-task keeps: the first found, or the shortest of every "
                            "round's (fewest agent turns)")
        p.add_argument("--select", choices=SELECTIONS, default=d.select,
                       help="what a round imitates: tau2's passes, or the config's reward section's best "
                            "(rl/rft_selection.py)")
        p.add_argument("--min-reward", type=float, default=None,
                       help="with --select reward: keep only episodes scoring at least this (default: no floor)")
        p.add_argument("--order-seed", type=int, default=None,
                       help="seeds the order the rounds fine-tune in, nothing else (default: the config's seed): "
                            "the same data in another order tells how much a result owes to the order")

    cfg, args = parse_cli(argv, description=__doc__, add_arguments=flags)
    least = {"--sft-epochs": (args.sft_epochs, 1), "--sft-batch": (args.sft_batch, 1), "--trials": (args.trials, 1),
             "--per-task": (args.per_task, 1), "--epochs": (args.epochs, 1), "--batch": (args.batch, 1),
             "--sft-limit": (args.sft_limit, 0), "--rounds": (args.rounds, 0),
             "--heldout-trials": (args.heldout_trials, 0), "--sample-tasks": (args.sample_tasks, 0),
             "--unsolved-trials": (args.unsolved_trials, 0)}
    bad = [flag for flag, (value, lowest) in least.items() if value < lowest]
    if args.min_reward is not None and args.select != "reward":
        print("rl.rft: --min-reward needs --select reward", file=sys.stderr)
        return 2
    if args.prefer != "first" and args.select != "verifier":
        print("rl.rft: --prefer chooses among tau2's passes (--select verifier); with --select reward the reward "
              "section ranks them", file=sys.stderr)
        return 2
    if bad or args.temperature <= 0:
        print(f"rl.rft: {', '.join(bad) or '--temperature'} out of range (counts >= 1, --sft-limit / --rounds / "
              f"--heldout-trials / --sample-tasks / --unsolved-trials >= 0, --temperature > 0)", file=sys.stderr)
        return 2
    recipe = Recipe(teacher=args.teacher, sft_limit=args.sft_limit or None, sft_epochs=args.sft_epochs,
                    sft_lr=args.sft_lr, sft_batch=args.sft_batch, rounds=args.rounds, trials=args.trials,
                    sample_tasks=args.sample_tasks or None, temperature=args.temperature, per_task=args.per_task,
                    epochs=args.epochs, lr=args.lr, batch=args.batch, heldout_trials=args.heldout_trials,
                    select=args.select, min_reward=args.min_reward, unsolved_trials=args.unsolved_trials,
                    prefer=args.prefer, order_seed=args.order_seed)
    try:
        job = RejectionSampling(cfg, recipe, Path(args.out))
    except ValueError as e:
        print(f"rl.rft: {e}", file=sys.stderr)
        return 2
    from actors.learner import LearnerFailed
    from rl.actor_calls import ActorFailed

    try:
        summary = job.run()
    except (ValueError, ActorFailed, LearnerFailed) as e:  # bad data, a dead engine or rank: one line
        print(f"rl.rft: stopped: {e}; the finished stages are kept in {args.out} (the same command finishes the "
              f"rest)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nrl.rft: interrupted; the finished stages are kept in {args.out} (the same command finishes the "
              f"rest)", file=sys.stderr)
        return 130
    finally:
        ray.shutdown()
    after = summary["rft"][-1]["heldout"] if summary["rft"] else summary["before"]
    print(f"held-out success ({cfg.train.eval_split}, {after['eval/tasks']} tasks): before "
          f"{summary['before']['eval/success']:.2f} -> after {after['eval/success']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
