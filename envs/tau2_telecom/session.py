"""TelecomSession: one tau2 telecom episode behind a three-call API.

    obs = session.reset(task, mode)      # system prompt (tau2 policy), tool schemas, opening message
    obs = session.step(assistant_turn)   # raw model text or an OpenAI assistant message -> new messages
    res = session.evaluate()             # tau2's evaluator: per-component checks and the task reward

The environment, its tools, the DB sync and the evaluator are tau2's own code; this class only
(1) validates the agent's tool calls before anything reaches tau2 (bad calls become error observations),
(2) routes each turn the way tau2's orchestrator does (tools -> environment, text -> simulated customer),
(3) keeps tau2's message trajectory so that tau2's evaluator can score it, and the session can be rebuilt.
"""
from __future__ import annotations

import pickle
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.choices import PROMPTS
from envs.tau2_telecom.endpoint import LLMEndpoint
from envs.tau2_telecom.tool_calls import ParsedTurn, ToolCallError, parse_assistant_turn
from envs.tau2_telecom.world import DONE_TOOL, TelecomWorld

SCORED_TERMINATIONS = {t2.TerminationReason.AGENT_STOP.value, t2.TerminationReason.USER_STOP.value}
USER_STOP_TOKENS = (t2.STOP, t2.TRANSFER, t2.OUT_OF_SCOPE)


@dataclass(frozen=True)
class SessionLimits:
    max_turns: int = 30  # agent turns; then the episode ends with tau2's "max_steps"
    max_errors: int = 10  # tool-call errors (rejected or raised); then "too_many_errors" (tau2's default is 10)
    max_user_tool_calls: int = 10  # phone actions the simulated customer may take in one reply


@dataclass
class Observation:
    messages: list[dict]  # OpenAI chat messages to append to the agent's conversation
    done: bool = False
    termination: str | None = None  # tau2 TerminationReason value once done
    tools: list[dict] | None = None  # OpenAI function schemas; only on reset
    info: dict = field(default_factory=dict)  # per-turn counters: tool_calls, tool_errors, rejected_calls

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    task_id: str
    reward: float  # tau2's reward: product of the components in reward_basis; 0 unless the episode stopped properly
    success: bool  # reward within 1e-6 of 1 (tau2's definition)
    termination: str | None
    reward_basis: list[str]
    env_assertions: list[dict]  # [{func_name, arguments, met}]
    actions: list[dict]  # [{action_id, name, requestor, met}]
    communicate: list[dict]
    nl_assertions: list[dict] | None  # None when no judge is configured
    db_match: bool | None
    turns: int
    tool_errors: int
    rejected_calls: int
    note: str | None = None
    # Why the reward is 0 for a reason that is not the agent's: "eval_failed" (tau2's evaluator raised, e.g. a judge
    # outage) or "user_error" (the customer simulator failed). Counted per step; never a silent 0.
    failure: str | None = None

    @property
    def env_assertion_fraction(self) -> float:
        return _fraction(self.env_assertions)

    @property
    def action_fraction(self) -> float:
        return _fraction(self.actions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["env_assertion_fraction"] = self.env_assertion_fraction
        d["action_fraction"] = self.action_fraction
        return d


def _fraction(checks: list[dict]) -> float:
    return sum(c["met"] for c in checks) / len(checks) if checks else 1.0


class SimulatedUser(Protocol):
    """The customer in dual mode. Implementations act on the phone through `session.user_tool_call`."""

    def opening(self, session: TelecomSession) -> str: ...

    def respond(self, session: TelecomSession, agent_text: str) -> str: ...


class TelecomSession:
    def __init__(self, world: TelecomWorld, limits: SessionLimits | None = None,
                 user: SimulatedUser | None = None, judge: LLMEndpoint | None = None, prompt: str = "full"):
        """prompt: "full" = tau2's system prompt (instructions + the whole policy and tech-support manual,
        ~8-10k tokens) and full tool schemas - the benchmark setting; "compact" = tau2's instructions and
        the ticket without the policy documents, and compact tool schemas (~1-2k tokens) - for small models
        and CPU runs, which learn the policy from demonstrations and reward instead; "minimal" = compact's text
        with the tools as one `name(args)` line each inside the system prompt (~0.7k tokens in all), for the
        smallest models, whose cost on a CPU is mostly attention over the prompt."""
        if prompt not in PROMPTS:
            raise ValueError(f"unknown prompt style {prompt!r}; expected one of {PROMPTS}")
        self.world = world
        self.limits = limits or SessionLimits()
        self.user = user
        self.judge = judge
        self.prompt = prompt
        self.task: t2.Task | None = None
        self.mode = "solo"
        self.env: t2.TelecomEnvironment | None = None
        self.trajectory: list[t2.Message] = []  # tau2 messages, what tau2's evaluator scores
        self.rejected: list[dict] = []  # calls refused before reaching tau2 (kept: nothing is dropped silently)
        self.turns = 0
        self.tool_errors = 0
        self.done = False
        self.termination: str | None = None
        self.transferred = False  # the agent called transfer_to_human_agents
        self.user_failure: str | None = None  # why the customer simulator failed, if it did

    # ------------------------------------------------------------------ reset
    def reset(self, task: t2.Task, mode: str = "solo") -> Observation:
        if mode == "dual" and self.user is None:
            raise ValueError("dual mode needs a simulated user (ScriptedUser or LLMUser)")
        self._begin(task, mode)
        messages = [{"role": "system", "content": self.system_prompt()}]
        if mode == "solo":
            # tau2's solo agent sees the ticket inside the system prompt only; chat templates want a user turn.
            messages.append({"role": "user", "content": f"Ticket: {task.ticket}"})
        else:
            greeting = t2.DEFAULT_FIRST_AGENT_MESSAGE.content
            self.trajectory.append(t2.AssistantMessage(role="assistant", content=greeting))
            messages.append({"role": "assistant", "content": greeting})
            opening = self._ask_user(self.user.opening)
            if opening is not None:
                messages.append({"role": "user", "content": opening})
        return Observation(messages=messages, done=self.done, termination=self.termination,
                           tools=self.world.prompt_tools(mode, self.prompt))

    def _begin(self, task: t2.Task, mode: str, history: list[t2.Message] | None = None) -> None:
        if mode == "solo" and not task.ticket:
            raise ValueError(f"task {task.id!r} has no ticket, so it cannot run in solo mode")
        self.__init__(self.world, self.limits, self.user, self.judge, self.prompt)
        self.task, self.mode = task, mode
        self.env = self.world.new_env(solo_mode=(mode == "solo"))
        init = task.initial_state
        # tau2's own state setter: initialization data and actions, then it replays the tool calls in
        # `history` and raises if any output differs from the recorded one; then a sync.
        self.env.set_state(init.initialization_data if init else None,
                           init.initialization_actions if init else None, history or [])
        self.trajectory = list(history or [])

    def system_prompt(self) -> str:
        policy = self.world.policy(self.mode) if self.prompt == "full" else "(not shown)"
        if self.mode == "solo":
            instruction = t2.AGENT_SOLO_INSTRUCTION.format(stop_function_name=DONE_TOOL.name,
                                                          stop_token=t2.LLMSoloAgent.STOP_TOKEN)
            text = t2.SYSTEM_PROMPT_SOLO.format(agent_instruction=instruction, domain_policy=policy,
                                                ticket=self.task.ticket)
        else:
            text = t2.SYSTEM_PROMPT.format(agent_instruction=t2.AGENT_INSTRUCTION, domain_policy=policy)
        if self.prompt == "minimal":  # no schemas go to the chat template, so the prompt names tools and format
            text += ("\n<tools>\nCall a tool by writing <tool_call>\n{\"name\": <tool>, \"arguments\": <json object>}"
                     f"\n</tool_call>\n{self.world.tool_signatures(self.mode)}\n</tools>")
        return text

    # ------------------------------------------------------------------- step
    def step(self, assistant_turn: Any) -> Observation:
        if self.task is None:
            raise RuntimeError("call reset(task, mode) before step()")
        if self.done:
            return Observation([], done=True, termination=self.termination, info={"note": "episode already over"})
        self.turns += 1
        parsed = parse_assistant_turn(assistant_turn, self.world.tool_table(self.mode), id_prefix=f"t{self.turns}")
        if parsed.has_calls:
            messages, info = self._run_agent_calls(parsed)
        else:
            messages, info = self._agent_says(parsed.text), {}
        if not self.done and self.tool_errors >= self.limits.max_errors:
            self._finish(t2.TerminationReason.TOO_MANY_ERRORS)
        if not self.done and self.turns >= self.limits.max_turns:
            self._finish(t2.TerminationReason.MAX_STEPS)
        return Observation(messages, done=self.done, termination=self.termination, info=info)

    def _run_agent_calls(self, parsed: ParsedTurn) -> tuple[list[dict], dict]:
        calls = [c for c in parsed.calls if c.name != DONE_TOOL.name]
        stop = len(calls) < len(parsed.calls)
        tool_calls = [t2.ToolCall(id=c.id, name=c.name, arguments=c.arguments, requestor="assistant") for c in calls]
        if tool_calls:
            self.trajectory.append(t2.AssistantMessage(role="assistant", content=parsed.text or None,
                                                       tool_calls=tool_calls))
        results: dict[str, dict] = {}
        raised = 0
        for call in tool_calls:
            reply = self.env.get_response(call)  # tau2: run the tool, sync phone<->carrier, errors as text
            self.trajectory.append(reply)
            raised += reply.error
            self.transferred |= call.name == "transfer_to_human_agents"
            results[call.id] = _tool_message(call.id, call.name, reply.content)
        for err in parsed.errors:
            self.rejected.append({"turn": self.turns, **asdict(err)})
            results[err.id] = _tool_message(err.id, err.name, err.message)
        self.tool_errors += raised + len(parsed.errors)
        if stop:
            # tau2's solo agent turns a `done` call into a ###STOP### text message.
            self.trajectory.append(t2.AssistantMessage(role="assistant", content=t2.LLMSoloAgent.STOP_TOKEN))
            self._finish(t2.TerminationReason.AGENT_STOP)
        # Answer in the order the calls were attempted, so ids line up with the model's output.
        ordered = [results[k] for k in sorted(results, key=_call_index)]
        return ordered, {"tool_calls": len(tool_calls), "tool_errors": raised, "rejected_calls": len(parsed.errors)}

    def _agent_says(self, text: str) -> list[dict]:
        self.trajectory.append(t2.AssistantMessage(role="assistant", content=text))
        if t2.LLMSoloAgent.STOP_TOKEN in text:
            self._finish(t2.TerminationReason.AGENT_STOP)
            return []
        if self.mode == "solo":
            # tau2's orchestrator ends a solo episode whose agent writes text instead of calling a tool.
            self._finish(t2.TerminationReason.AGENT_ERROR)
            return []
        reply = self._ask_user(self.user.respond, text)
        return [] if reply is None else [{"role": "user", "content": reply}]

    def _ask_user(self, method, *args) -> str | None:
        """The simulated customer's next message; a simulator failure ends the episode (tau2: user_error)."""
        try:
            text = method(self, *args)
        except Exception as e:  # an LLM endpoint down or a malformed response must not crash the run
            self.user_failure = f"{type(e).__name__}: {str(e)[:300]}"
            self._finish(t2.TerminationReason.USER_ERROR)
            return None
        return self._user_says(text)

    def _user_says(self, text: str) -> str:
        self.trajectory.append(t2.UserMessage(role="user", content=text))
        if any(tok in text for tok in USER_STOP_TOKENS):
            self._finish(t2.TerminationReason.USER_STOP)
        return text

    def user_tool_call(self, name: str, arguments: dict) -> t2.ToolMessage:
        """The simulated customer acts on the phone (dual mode). Recorded in the trajectory like tau2 does."""
        idx = sum(isinstance(m, t2.UserMessage) and m.is_tool_call() for m in self.trajectory)
        checked = self.world.user_tool_table.validate(f"u{idx}", name, arguments)
        if isinstance(checked, ToolCallError):
            return t2.ToolMessage(id=checked.id, role="tool", content=checked.message, requestor="user", error=True)
        call = t2.ToolCall(id=checked.id, name=name, arguments=arguments, requestor="user")
        self.trajectory.append(t2.UserMessage(role="user", tool_calls=[call]))
        reply = self.env.get_response(call)
        self.trajectory.append(reply)
        return reply

    def _finish(self, reason: t2.TerminationReason) -> None:
        self.done, self.termination = True, reason.value

    # --------------------------------------------------------------- evaluate
    def env_assertions_now(self) -> list[bool]:
        """Run the task's env assertions on (a copy of) the current state; tau2 assertions sync the env."""
        criteria = self.task.evaluation_criteria
        env = self._copy_env()
        return [env.run_env_assertion(a, raise_assertion_error=False) for a in (criteria.env_assertions or [])]

    def _copy_env(self) -> t2.TelecomEnvironment:
        env = self.world.new_env(solo_mode=self.mode == "solo")
        env.tools.db = pickle.loads(pickle.dumps(self.env.tools.db))
        env.user_tools.db = pickle.loads(pickle.dumps(self.env.user_tools.db))
        return env

    def evaluate(self) -> EvalResult:
        """Score the episode with tau2's evaluator.

        Components are always computed (as if the agent had stopped), so partial credit exists for every
        episode; the reward follows tau2: 0 unless the episode ended by an agent or user stop.
        """
        if self.task is None:
            raise RuntimeError("call reset(task, mode) before evaluate()")
        sim = t2.SimulationRun(id=f"{self.task.id}", task_id=self.task.id, start_time="", end_time="",
                               duration=0.0, termination_reason=t2.TerminationReason.AGENT_STOP,
                               messages=self.trajectory)
        kind = t2.EvaluationType.ALL_WITH_NL_ASSERTIONS if self.judge else t2.EvaluationType.ALL
        note, failure = None, None
        try:
            with _judge_settings(self.judge):
                info = t2.evaluate_simulation(sim, self.task, kind, solo_mode=self.mode == "solo",
                                              domain=self.world.registry_name)
        except Exception as e:  # e.g. NL assertions in the reward basis but no judge, or a judge outage
            info, note = t2.RewardInfo(reward=0.0, reward_basis=None), f"evaluation failed: {type(e).__name__}: {e}"
            failure = "eval_failed"
        reward = info.reward if self.termination in SCORED_TERMINATIONS else 0.0
        if note is None and self.termination not in SCORED_TERMINATIONS:
            note = f"episode ended by {self.termination or 'nothing (still running)'}: tau2 scores it 0"
            if self.user_failure:
                note += f" (user simulator failed: {self.user_failure})"
        if failure is None and self.termination == t2.TerminationReason.USER_ERROR.value:
            failure = "user_error"
        return EvalResult(
            task_id=self.task.id,
            reward=reward,
            success=abs(reward - 1.0) < 1e-6,
            termination=self.termination,
            reward_basis=[str(getattr(b, "value", b)) for b in (info.reward_basis or [])],
            env_assertions=[{"func_name": c.env_assertion.func_name, "arguments": c.env_assertion.arguments,
                             "met": bool(c.met)} for c in (info.env_assertions or [])],
            actions=[{"action_id": c.action.action_id, "name": c.action.name, "requestor": c.action.requestor,
                      "met": bool(c.action_match)} for c in (info.action_checks or [])],
            communicate=[{"info": c.info, "met": bool(c.met)} for c in (info.communicate_checks or [])],
            nl_assertions=None if not self.judge else [
                {"assertion": c.nl_assertion, "met": bool(c.met), "justification": c.justification}
                for c in (info.nl_assertions or [])],
            db_match=None if info.db_check is None else bool(info.db_check.db_match),
            turns=self.turns, tool_errors=self.tool_errors, rejected_calls=len(self.rejected), note=note,
            failure=failure,
        )

    # ------------------------------------------------------- log and rebuild
    def export_log(self) -> dict:
        """Everything needed to rebuild this session elsewhere (e.g. after its actor died). JSON-safe."""
        return {
            "task": self.task.model_dump(mode="json"),
            "mode": self.mode,
            "trajectory": [m.model_dump(mode="json") for m in self.trajectory],
            "rejected": self.rejected,
            "counters": {"turns": self.turns, "tool_errors": self.tool_errors, "done": self.done,
                         "termination": self.termination, "transferred": self.transferred},
        }

    @classmethod
    def restore(cls, world: TelecomWorld, log: dict, limits: SessionLimits | None = None,
                user: SimulatedUser | None = None, judge: LLMEndpoint | None = None,
                prompt: str = "full") -> TelecomSession:
        """Rebuild from `export_log()`: tau2 replays every recorded tool call and checks each output matches."""
        s = cls(world, limits, user, judge, prompt)
        s._begin(t2.Task.model_validate(log["task"]), log["mode"], [message_from_dict(m) for m in log["trajectory"]])
        s.rejected = list(log["rejected"])
        c = log["counters"]
        s.turns, s.tool_errors, s.done, s.termination, s.transferred = (
            c["turns"], c["tool_errors"], c["done"], c["termination"], c["transferred"])
        return s


_MESSAGE_TYPES = {"assistant": t2.AssistantMessage, "user": t2.UserMessage, "tool": t2.ToolMessage,
                  "system": t2.SystemMessage}


def message_from_dict(d: dict) -> t2.Message:
    return _MESSAGE_TYPES[d["role"]].model_validate(d)


def _tool_message(call_id: str, name: str | None, content: str | None) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "name": name or "", "content": content or ""}


def _call_index(call_id: str) -> int:
    tail = call_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


_judge_lock = threading.Lock()


@contextmanager
def _judge_settings(judge: LLMEndpoint | None):
    """tau2's NL-assertion judge reads its model from module constants; point them at ours for one call."""
    if judge is None:
        yield
        return
    mod = t2.evaluator_nl_assertions
    args = judge.litellm_args()
    with _judge_lock:
        saved = (mod.DEFAULT_LLM_NL_ASSERTIONS, mod.DEFAULT_LLM_NL_ASSERTIONS_ARGS)
        mod.DEFAULT_LLM_NL_ASSERTIONS, mod.DEFAULT_LLM_NL_ASSERTIONS_ARGS = judge.model, args
        try:
            yield
        finally:
            mod.DEFAULT_LLM_NL_ASSERTIONS, mod.DEFAULT_LLM_NL_ASSERTIONS_ARGS = saved

