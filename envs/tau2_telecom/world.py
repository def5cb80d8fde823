"""TelecomWorld: the parts of tau2's telecom domain that are the same for every episode, parsed once.

tau2's own `get_environment()` re-reads the DB TOML files and the policy markdown on every call, and
`Environment.get_tools()` rebuilds pydantic models for all 43 tools (~35 ms). An RL run starts thousands
of episodes, so a world keeps the parsed DBs, policies, tool schemas and parameter models, and each episode
gets a deep copy of the two DBs wrapped in tau2's own TelecomEnvironment (tools, sync and assertions are
tau2's code, untouched).
"""
from __future__ import annotations

import copy
import itertools
import pickle
from dataclasses import dataclass
from functools import cached_property

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.choices import MODES, POLICIES
from envs.tau2_telecom.tool_calls import ToolCallLimits, ToolTable

_world_ids = itertools.count()


def _done() -> str:
    """Call this function when you are done with the task."""
    return t2.LLMSoloAgent.STOP_TOKEN


# tau2's solo agent ends an episode by calling a tool named `done`; tau2 builds it from a function of that name.
_done.__name__ = t2.LLMSoloAgent.STOP_FUNCTION_NAME
DONE_TOOL: t2.Tool = t2.as_tool(_done)


@dataclass(frozen=True)
class _Templates:
    policy: str
    domain_name: str


class TelecomWorld:
    """Parsed telecom domain: hand out fresh tau2 environments, tool schemas and tool tables."""

    def __init__(self, policy: str = "manual", limits: ToolCallLimits | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown tech-support policy {policy!r}; expected one of {POLICIES}")
        self.policy_type = policy
        self.limits = limits or ToolCallLimits()
        # Kept pickled: unpickling is ~3x faster than copy.deepcopy of the pydantic models, per episode.
        self._db = pickle.dumps(t2.TelecomDB.load(t2.TELECOM_DATA_DIR / "db.toml"))
        self._user_db = pickle.dumps(t2.TelecomUserDB.load(t2.TELECOM_DATA_DIR / "user_db.toml"))
        # tau2 composes the policy text per mode; take it from tau2 once rather than re-implement it.
        self._templates = {}
        for solo in (False, True):
            env = t2.telecom_environment.get_environment(solo_mode=solo, policy_type=policy)
            self._templates[solo] = _Templates(policy=env.policy, domain_name=env.domain_name)
        probe = self.new_env(solo_mode=False)
        probe.set_solo_mode(True)  # tau2's check that agent and phone tool names don't clash, done once
        self.agent_tools: dict[str, t2.Tool] = {t.name: t for t in probe.get_tools()}
        self.user_tools: dict[str, t2.Tool] = {t.name: t for t in probe.get_user_tools()}
        # tau2's evaluator looks environments up by domain name; register this world's cheap constructor.
        self.registry_name = f"telerl-telecom-{policy}-{next(_world_ids)}"
        t2.registry.register_domain(self.new_env, self.registry_name)

    def new_env(self, solo_mode: bool = False) -> t2.TelecomEnvironment:
        tpl = self._templates[solo_mode]
        env = t2.TelecomEnvironment(
            domain_name=tpl.domain_name,
            policy=tpl.policy,
            tools=t2.TelecomTools(pickle.loads(self._db)),
            user_tools=t2.TelecomUserTools(pickle.loads(self._user_db)),
        )
        # Not env.set_solo_mode(): it re-validates by rebuilding all 43 tool models (~60 ms) every episode;
        # the world checked that once in __init__.
        env.solo_mode = solo_mode
        return env

    def policy(self, mode: str) -> str:
        return self._templates[_solo(mode)].policy

    def agent_tool_objects(self, mode: str) -> list[t2.Tool]:
        """The tools the *agent* may call: carrier tools, plus phone tools and `done` in solo mode."""
        tools = list(self.agent_tools.values())
        if _solo(mode):
            tools += list(self.user_tools.values()) + [DONE_TOOL]
        return tools

    @cached_property
    def _schemas(self) -> dict[str, list[dict]]:
        return {m: [t.openai_schema for t in self.agent_tool_objects(m)] for m in MODES}

    def tool_schemas(self, mode: str, compact: bool = False) -> list[dict]:
        """OpenAI function-format schemas of the agent's tools (a fresh copy; callers may mutate it).
        compact=True keeps names, types and required lists and the first sentence of each description:
        about a third of the tokens, for small models and short contexts."""
        schemas = copy.deepcopy(self._schemas[_check_mode(mode)])
        return [_compact_schema(s) for s in schemas] if compact else schemas

    def prompt_tools(self, mode: str, prompt: str) -> list[dict] | None:
        """The schemas a prompt style hands the chat template: full or compact JSON schemas, or None for
        "minimal", whose system prompt lists the tools itself (`tool_signatures`)."""
        return None if prompt == "minimal" else self.tool_schemas(mode, compact=prompt == "compact")

    def tool_signatures(self, mode: str) -> str:
        """One line per tool, `name(arg, ...)`: the tool list of the "minimal" prompt (~10x fewer tokens than the
        compact schemas; argument types and descriptions are left for demonstrations to teach)."""
        lines = []
        for schema in self._schemas[_check_mode(mode)]:
            fn = schema["function"]
            lines.append(f"{fn['name']}({', '.join(fn.get('parameters', {}).get('properties', {}))})")
        return "\n".join(lines)

    @cached_property
    def _tables(self) -> dict[str, ToolTable]:
        return {m: ToolTable({t.name: t.params for t in self.agent_tool_objects(m)}, self.limits) for m in MODES}

    def tool_table(self, mode: str) -> ToolTable:
        return self._tables[_check_mode(mode)]

    @cached_property
    def user_tool_table(self) -> ToolTable:
        return ToolTable({t.name: t.params for t in self.user_tools.values()}, self.limits)


def _compact_schema(schema: dict) -> dict:
    fn = schema["function"]
    params = fn.get("parameters", {})
    props = {k: {"type": v.get("type", "string")} if "type" in v else {"type": "object"}
             for k, v in params.get("properties", {}).items()}
    compact = {"name": fn["name"], "description": fn.get("description", "").split(". ")[0].rstrip("."),
               "parameters": {"type": "object", "properties": props}}
    if params.get("required"):
        compact["parameters"]["required"] = params["required"]
    return {"type": "function", "function": compact}


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return mode


def _solo(mode: str) -> bool:
    return _check_mode(mode) == "solo"


class Tau2ConstructorWorld(TelecomWorld):
    """Baseline for benchmarks only: every environment is built by tau2's own get_environment()."""

    def new_env(self, solo_mode: bool = False) -> t2.TelecomEnvironment:
        return t2.telecom_environment.get_environment(solo_mode=solo_mode, policy_type=self.policy_type)


WORLD_KINDS = {"cached": TelecomWorld, "tau2_per_episode": Tau2ConstructorWorld}
_worlds: dict[tuple, TelecomWorld] = {}


def get_world(policy: str = "manual", limits: ToolCallLimits | None = None, kind: str = "cached") -> TelecomWorld:
    """One world per (policy, limits, kind) per process."""
    key = (policy, limits or ToolCallLimits(), kind)
    if key not in _worlds:
        _worlds[key] = WORLD_KINDS[kind](policy, key[1])
    return _worlds[key]
