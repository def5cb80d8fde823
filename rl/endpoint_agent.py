"""An agent behind any OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API) for `rl.evaluate --endpoint`:
tools go out as OpenAI tools, `tool_calls` come back and run in the tau2 session, their results go back as tool
messages, until the episode ends.

    play = endpoint_player(LLMEndpoint(model="openai/Qwen3-4B", base_url="http://127.0.0.1:8000/v1"))
    play(session, task, mode)   # the same signature as the scripted agents (envs/tau2_telecom/expert.py)
"""
from __future__ import annotations

import os
from collections.abc import Callable

from envs.tau2_telecom.endpoint import LLMEndpoint


def _assistant_message(message) -> dict:
    """litellm's response message -> an OpenAI assistant message dict (what TelecomSession.step reads)."""
    calls = [{"id": c.id, "type": "function",
              "function": {"name": c.function.name, "arguments": c.function.arguments or "{}"}}
             for c in (getattr(message, "tool_calls", None) or [])]
    out = {"role": "assistant", "content": message.content or ""}
    if calls:
        out["tool_calls"] = calls
    return out


def _history_turn(sent: dict, replies: list[dict]) -> list[dict]:
    """The assistant turn and the session's replies, as the endpoint must see them next: the session names each call
    result by its own id (in call order), so the assistant message takes those ids; a reply to no call (an
    unreadable turn) becomes a user message, since a tool message must answer a call."""
    tool_ids = [r["tool_call_id"] for r in replies if r.get("role") == "tool"]
    calls = [{**c, "id": tool_ids[i]} if i < len(tool_ids) else c for i, c in enumerate(sent.get("tool_calls", []))]
    turn = [{**sent, "tool_calls": calls} if calls else {k: v for k, v in sent.items() if k != "tool_calls"}]
    answered = {c["id"] for c in calls}
    for r in replies:
        if r.get("role") == "tool" and r["tool_call_id"] not in answered:
            turn.append({"role": "user", "content": f"Tool error: {r['content']}"})
        else:
            turn.append(r)
    return turn


def endpoint_player(endpoint: LLMEndpoint) -> Callable:
    """A scripted-agent-style `play(session, task, mode)` that asks `endpoint` for every turn."""
    # Like envs/tau2_telecom/tau2_api.py: litellm would fetch its model-cost map over the network on import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    def play(session, task, mode: str) -> None:
        obs = session.reset(task, mode)
        messages, tools = list(obs.messages), obs.tools
        while not obs.done:
            response = litellm.completion(model=endpoint.model, messages=messages,
                                          **endpoint.litellm_args(**({"tools": tools} if tools else {})))
            sent = _assistant_message(response.choices[0].message)
            obs = session.step(sent)
            messages += _history_turn(sent, obs.messages)

    return play
