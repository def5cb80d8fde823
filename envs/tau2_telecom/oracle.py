"""The oracle agent: plays a task's gold actions through the session API.

Carrier-side actions (and, in solo mode, phone actions too) become `<tool_call>` turns; in dual mode each
phone action becomes a request to the customer in the explicit form `name(arg=value)`. Used to check the
environment end to end, to make SFT data, and as the baseline a trained policy should approach.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.session import Observation, TelecomSession
from envs.tau2_telecom.world import DONE_TOOL

CLOSING = "Is there anything else I can help you with today?"


def tool_call_text(name: str, arguments: dict) -> str:
    """Hermes/Qwen-style tool-call markup, the format the rollout workers parse."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def ask_user_text(name: str, arguments: dict) -> str:
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items())
    return f"Please do this on your phone: {name}({args})"


def oracle_turns(task: t2.Task, mode: str) -> list[str]:
    """The assistant turns that solve `task` with its gold actions, ending the episode properly."""
    turns = []
    for action in task.evaluation_criteria.actions or []:
        if action.requestor == "assistant" or mode == "solo":
            turns.append(tool_call_text(action.name, action.arguments))
        else:
            turns.append(ask_user_text(action.name, action.arguments))
    if mode == "solo":
        turns.append(tool_call_text(DONE_TOOL.name, {}))
    else:
        turns += [CLOSING, t2.LLMSoloAgent.STOP_TOKEN]  # the customer normally hangs up after CLOSING
    return turns


@dataclass
class Episode:
    """One played episode: the agent's side of the conversation and what came back."""

    first: Observation
    turns: list[str] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)

    def chat_messages(self) -> list[dict]:
        """The whole conversation in OpenAI chat format (as an SFT example)."""
        msgs = list(self.first.messages)
        for turn, obs in zip(self.turns, self.observations):
            msgs.append({"role": "assistant", "content": turn})
            msgs.extend(obs.messages)
        return msgs


def play_oracle(session: TelecomSession, task: t2.Task, mode: str = "solo") -> Episode:
    episode = Episode(first=session.reset(task, mode))
    for turn in oracle_turns(task, mode):
        if session.done:
            break
        episode.turns.append(turn)
        episode.observations.append(session.step(turn))
    return episode
