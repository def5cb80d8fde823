"""Preference pairs (prompt / chosen / rejected) for the Bradley-Terry reward model, in OpenRLHF-style JSONL.

    python -m rl.rm.pairs tau2 --split train --mode solo --out /tmp/pairs/train.jsonl
    python -m rl.rm.pairs rollouts runs/x/grpo --out /tmp/pairs/rollouts.jsonl
    python -m rl.rm.pairs teleqna ../shared/datasets/teleqna/sample.json --out /tmp/pairs/teleqna.jsonl

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
