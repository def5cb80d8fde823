"""What crosses the actor boundaries of one RL step, as typed dataclasses (Ray pickles them as they are).

    driver --EpisodeJob--> RolloutWorker --Trajectory--> driver --Trajectory--> RewardActor --Score--> driver
    driver --TrainBatch--> LearnerGroup (rl/train.py builds it from trajectories + scores: build_train_batch)
    RunDir writes one EpisodeRecord per trajectory to trajectories.jsonl; readers (rl/rm pairs, evaluation) parse
    rows back with EpisodeRecord.from_row.

Built once by their producer and read by attribute everywhere; each fact lives in one place (the termination
and the rejected-call count are the evaluator's, in `Trajectory.eval`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rl.choices import TOKEN_AGGREGATIONS

if TYPE_CHECKING:
    from envs.tau2_telecom.session import EvalResult


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run: a tau2 task (its JSON dict) and its group in the step (GRPO/RLOO baselines)."""

    task: dict
    group: int


@dataclass
class EpisodeTimings:
    generate_s: float = 0.0  # waiting on the engine
    env_s: float = 0.0  # waiting on the environment (reset, tool calls, customer, evaluation)

    @property
    def env_share(self) -> float:
        return self.env_s / max(1e-9, self.env_s + self.generate_s)


@dataclass
class Trajectory:
    """One finished episode: what the learner trains on, what the reward actor scores and what the logs keep.
    The OpenRLHF plugin scores episodes whose tokens OpenRLHF holds: there the token fields are empty."""

    task_id: str
    group: int
    messages: list[dict]  # the conversation, OpenAI chat format (reward model, judge, logs, SFT)
    eval: EvalResult  # tau2's evaluator: reward, success, components, termination, rejected calls
    nl_assertions: list[str] = field(default_factory=list)  # the task's, for the LLM judge (tau2 telecom: none)
    token_ids: list[int] = field(default_factory=list)  # prompt + every turn, exactly as the engine saw them
    loss_mask: list[int] = field(default_factory=list)  # 1 on tokens the policy sampled
    logprobs: list[float] = field(default_factory=list)  # behaviour policy's logprob of token_ids[t] (0 off-mask)
    turns: int = 0  # assistant turns
    truncated: bool = False  # ran out of context before the episode ended
    policy_version: int = 0  # weight syncs the engine had received when the episode started
    timings: EpisodeTimings = field(default_factory=EpisodeTimings)
    tau2_messages: list[dict] | None = None  # tau2's message log, when RolloutSettings.tau2_messages asks for it

    @property
    def termination(self) -> str | None:
        return self.eval.termination

    @property
    def rejected_calls(self) -> int:
        return self.eval.rejected_calls

    @property
    def generated_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def tool_calls(self) -> int:
        """Tool calls the agent attempted (each gets one tool message back, rejected calls included); a policy that
        farms partial credit by repeating calls shows here."""
        return sum(m.get("role") == "tool" for m in self.messages)


@dataclass
class Score:
    """The reward actor's verdict on one trajectory: the mixed reward and every component behind it
    (a component that does not apply to the episode is absent; see actors/reward_actor.py)."""

    reward: float
    components: dict[str, float]


@dataclass
class BatchTotals:
    """Whole-batch counts every rank needs so that each micro loss gets its exact weight in the batch objective."""

    tokens: int  # loss tokens
    sequences: int  # sequences with any loss token
    max_len: int  # longest sequence (the constant of seq_mean_token_sum_norm)

    @classmethod
    def of(cls, input_ids: list[list[int]], loss_mask: list[list[int]]) -> BatchTotals:
        return cls(tokens=int(sum(sum(m) for m in loss_mask)), sequences=sum(1 for m in loss_mask if any(m)),
                   max_len=max(len(r) for r in input_ids))

    def units(self, aggregation: str) -> int:
        """What the loss averages over (rl.algorithms.aggregate): tokens, or sequences that have any."""
        return self.tokens if aggregation in TOKEN_AGGREGATIONS else self.sequences


@dataclass
class TrainBatch:
    """What the learner consumes: ragged rows, one per trained sequence, aligned token by token."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    old_logprobs: list[list[float]] | None = None  # behaviour (or recomputed) logprobs; needed by train_step
    advantages: list[list[float]] | None = None  # per token; needed by train_step
    totals: BatchTotals | None = None  # set by LearnerGroup on each rank's share; None: the share is the batch
    # the frozen reference policy's logprobs (KL term), computed once when a batch serves several PPO updates;
    # None: each update runs the reference forward itself
    ref_logprobs: list[list[float]] | None = None
    # the sampler's logprobs when old_logprobs are the learner's own (algorithm.recompute_old_logprobs): the
    # truncated importance weight's denominator (algorithm.tis_cap); None = no correction
    behaviour_logprobs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def rows(self, sl: slice) -> TrainBatch:
        return self.select(list(range(len(self)))[sl])

    def select(self, indices: list[int]) -> TrainBatch:
        """The rows at `indices`, in that order (a PPO mini-batch, a rank's share)."""
        def pick(rows: list | None) -> list | None:
            return None if rows is None else [rows[i] for i in indices]

        return TrainBatch(pick(self.input_ids), pick(self.loss_mask), pick(self.old_logprobs),
                          pick(self.advantages), self.totals, pick(self.ref_logprobs), pick(self.behaviour_logprobs))


@dataclass
class EpisodeRecord:
    """One row of a run's trajectories.jsonl."""

    step: int
    task_id: str
    group: int
    reward: float
    components: dict[str, float]
    messages: list[dict]
    turns: int = 0
    truncated: bool = False
    termination: str | None = None
    tokens: int = 0
    generated_tokens: int = 0
    policy_version: int = 0
    failure: str | None = None  # EvalResult.failure: eval_failed | user_error
    note: str | None = None  # the evaluator's note: why tau2 scored 0 (its error, the customer's, the termination)

    @classmethod
    def of(cls, step: int, t: Trajectory, s: Score) -> EpisodeRecord:
        return cls(step=step, task_id=t.task_id, group=t.group, reward=s.reward, components=s.components,
                   messages=t.messages, turns=t.turns, truncated=t.truncated, termination=t.termination,
                   tokens=len(t.token_ids), generated_tokens=t.generated_tokens, policy_version=t.policy_version,
                   failure=t.eval.failure, note=t.eval.note)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Any) -> EpisodeRecord:
        """Validate a parsed JSON row; a ValueError says which field is wrong."""
        if not isinstance(row, dict):
            raise ValueError(f"expected an object, got {type(row).__name__}")
        if not isinstance(row.get("task_id"), str):
            raise ValueError("missing or non-string 'task_id'")
        if not isinstance(row.get("components"), dict):
            raise ValueError("missing 'components'")
        if not isinstance(row.get("messages"), list):
            raise ValueError("missing or non-list 'messages'")
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        known.setdefault("step", 0)
        known.setdefault("group", 0)
        known.setdefault("reward", 0.0)
        return cls(**known)
