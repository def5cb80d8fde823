"""Episodes in tau2-bench's own results format (tau2.data_model.simulation.Results), so that tau2's metrics
(`compute_metrics`) and its viewer read a telerl evaluation like one of their own runs."""
from __future__ import annotations

import time

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.session import message_from_dict
from rl.eval_report import EpisodeOutcome
from rl.run_dir import git_revision


def tau2_results(tasks: dict[str, t2.Task], outcomes: list[EpisodeOutcome], *, agent: str, user: str,
                 policy: str, trials: int, max_steps: int, max_errors: int, seed: int | None) -> t2.Results:
    """One SimulationRun per outcome (its tau2 messages, reward and termination); the tasks that were run."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    sims = []
    known = {r.value for r in t2.TerminationReason}
    for o in outcomes:
        # tau2 has no reason for an episode that never ended (ours: context_overflow): agent_error; the note says why
        termination = t2.TerminationReason(o.termination if o.termination in known else "agent_error")
        sims.append(t2.SimulationRun(
            id=f"{o.task_id}#{o.trial}", task_id=o.task_id, start_time=now, end_time=now, duration=0.0,
            termination_reason=termination, agent_cost=0.0, user_cost=0.0, trial=o.trial, seed=seed,
            reward_info=t2.RewardInfo(reward=o.reward, info={"note": o.note, "failure": o.failure}),
            messages=[message_from_dict(m) for m in o.messages or []]))
    ran = [tasks[tid] for tid in dict.fromkeys(o.task_id for o in outcomes)]
    info = t2.Info(git_commit=git_revision(), num_trials=trials, max_steps=max_steps, max_errors=max_errors, seed=seed,
                user_info=t2.UserInfo(implementation=user), agent_info=t2.AgentInfo(implementation=f"telerl:{agent}"),
                environment_info=t2.EnvironmentInfo(domain_name="telecom", policy=policy))
    return t2.Results(info=info, tasks=ran, simulations=sims)

