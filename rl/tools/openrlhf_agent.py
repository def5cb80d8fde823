"""OpenRLHF plugin: pass this file as `--agent_func_path` to run telerl's tau2-Telecom sessions inside OpenRLHF's
rollouts and return telerl's hybrid reward (verifiable checks + learned RM + LLM judge; OpenRLHF cannot mix rule
and model rewards itself).

    python -m rl.tools.openrlhf_agent make-dataset [--config C] [--split S | --tasks-file F] --out prompts.jsonl
    TELERL_CONFIG=configs/x.yaml python -m openrlhf.cli.train_ppo_ray ... \
        --data.prompt_dataset prompts.jsonl --data.input_key input --data.label_key label \
        --data.apply_chat_template --train.agent_func_path /path/to/telerl/rl/tools/openrlhf_agent.py

The contract, as read in OpenRLHF 0.11.2 (openrlhf/utils/agent.py, openrlhf/trainer/ray/vllm_engine.py):
- `_load_agent_executor(path)` execs this file as module "agent_module", takes its `AgentExecutor` attribute,
  asserts `issubclass(AgentExecutor, AgentExecutorBase)` and calls `AgentExecutor()` with no arguments, once per
  vLLM engine actor (RolloutRayActor). That actor's event loop runs `executor.execute(prompt, label,
  sampling_params, max_length, hf_tokenizer, llm_engine, images)` for every sample concurrently (asyncio.gather).
- `MultiTurnAgentExecutor(agent_instance_cls).execute` makes one `agent_instance_cls()` per sample (no
  arguments), then `await reset({"observation": prompt, "label": label})` -> dict whose "observation" text is
  tokenised as the prompt (left-truncated if longer than max_length - max_tokens), then loops: set
  `sampling_params.max_tokens = max_length - len(tokens)` (break, WITHOUT calling step, when <= 0) ->
  `await llm_engine.generate(token_ids, params)` -> `await step({"observation_text", "action_text", "label",
  "sampling_params"})`, which returns {"rewards": tensor (summed over steps with .item()), "scores" (the last
  one; used by dynamic filtering), "environment_feedback": text (tokenised and appended after the action
  tokens), "done": bool, "sampling_params" (optional, next turn's), "extra_logs": {name: number} (the last
  step's; turned into Experience.info tensors)}.
- The prompt dataset (openrlhf/datasets/prompts_dataset.py) gives `label = row[label_key]` untouched and, with
  --data.apply_chat_template, `prompt = apply_chat_template(row[input_key], add_generation_prompt=True)` - no tools.
- Experience.info rows are merged per key across a batch and split again by batch size, so every episode must
  log the same extra_logs keys (a key missing in one episode fails the split).

What this file does on top of that (why each piece exists):
- reset() ignores the dataset's rendered prompt and renders the session's real opening WITH the tool schemas
  using the engine's own tokenizer (OpenRLHF's dataset rendering has no tools argument); the label names the task.
- vLLM leaves the end-of-turn token out of action_text (it is in the token ids), and the action tokens lack it
  when generation was cut off; step() only sees text, so AgentExecutor taps the engine to learn how each turn
  ended and step() closes an unclosed turn itself (OpenRLHF issue #1128). The feedback is the chat-template
  rendering of the environment's new messages plus the next generation prompt, cut from a full re-render and
  checked to be prefix-stable, so the token stream is exactly the model's chat format (as in RolloutWorker).
- OpenRLHF ends an episode that fills max_length without calling step(), i.e. unscored; step() counts tokens
  the same way and ends the episode (scored, like our trainer's truncated episodes) while 8 tokens remain.
- On done the episode is scored in-process by actors.reward_actor.RewardActorImpl with the telerl config in
  $TELERL_CONFIG (+ $TELERL_OVERRIDES, "key=value ..."), so mixing is identical to `python -m rl.train`.
  One world, one reward actor and one task table per process. Blocking work (tau2 steps, an LLM customer, the
  RM, the judge) runs in threads so the engine's event loop keeps generating for the other episodes.
"""
# No `from __future__ import annotations`: OpenRLHF execs this file without registering it in sys.modules, and
# dataclasses with string annotations look their module up there (AttributeError: 'NoneType' ... '__dict__').
import asyncio
import contextvars
import functools
import json
import os
import shlex
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

# OpenRLHF execs this file by path, so the repo root may not be importable yet.
_REPO_ROOT = Path(__file__).resolve().parents[2]  # rl/tools/openrlhf_agent.py -> the repo root
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402 - after the sys.path fix above
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor  # noqa: E402 - after the sys.path fix above

from actors.env_worker import EnvSettings  # noqa: E402 - after the sys.path fix above
from actors.rollout_worker import TemplateNotPrefixStable  # noqa: E402 - after the sys.path fix above
from rl.config import Config, ConfigError, load_config, parse_cli  # noqa: E402 - after the sys.path fix above
from rl.contracts import Score, Trajectory  # noqa: E402 - after the sys.path fix above

CONFIG_ENV, OVERRIDES_ENV = "TELERL_CONFIG", "TELERL_OVERRIDES"
MIN_TURN_TOKENS = 8  # below this much room left the episode ends (as in RolloutWorker)
# Components RewardActorImpl always returns (rl.rewards.check_score); rm/judge ones are added per config.
CHECK_COMPONENTS = ("tau2", "success", "env_assertions", "actions", "malformed_calls", "tool_errors", "penalty",
                    "checks")


# --------------------------------------------------------------------------- per-process state


@dataclass
class Runtime:
    """What every episode of one process shares: config, tau2 world, tasks, the reward actor."""

    cfg: Config
    settings: EnvSettings
    log_keys: tuple[str, ...]
    _tasks: dict = field(default_factory=dict)  # source -> {task id: tau2 Task}
    _reward: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # world and task tables
    _score_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def world(self):
        from envs.tau2_telecom.world import get_world  # one per process (get_world caches it)

        with self._lock:  # the first episodes arrive together; parse the domain once
            return get_world(self.settings.policy, self.settings.call_limits)

    def new_session(self, scripted_user: bool = False):
        from dataclasses import replace

        settings = replace(self.settings, user="scripted") if scripted_user else self.settings
        return settings.new_session(self.world)

    def task(self, label) -> object:
        """The tau2 task a dataset label names: JSON {"task_id", "split" | "tasks_file"}, or a bare task id
        (looked up in the config's env.tasks_file or env.split)."""
        task_id, source = parse_label(label, self.cfg)
        with self._lock:
            if source not in self._tasks:
                self._tasks[source] = {t.id: t for t in load_source(*source)}
            table = self._tasks[source]
        if task_id not in table:
            raise ValueError(f"OpenRLHF label {label!r}: no task {task_id!r} in {source[0]} {source[1]!r}")
        return table[task_id].model_copy(deep=True)  # sessions keep their task; never share one

    def score(self, trajectory: Trajectory) -> Score:
        """RewardActorImpl.score on one episode; serialised: the RM's tokenizer and model are not thread-safe."""
        with self._score_lock:
            if self._reward is None:
                from actors.reward_actor import RewardActorImpl

                self._reward = RewardActorImpl(self.cfg.reward, self.cfg.judge)
            return self._reward.score([trajectory])[0]


def parse_label(label, cfg: Config) -> tuple[str, tuple[str, str]]:
    if isinstance(label, str) and label.strip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as e:
            raise ValueError(f"OpenRLHF label {label!r} is not valid JSON: {e}") from None
    if isinstance(label, str) and label.strip():
        label = {"task_id": label.strip()}
    if not isinstance(label, dict) or not label.get("task_id"):
        raise ValueError(f"OpenRLHF label {label!r}: expected a task id or JSON with a \"task_id\" "
                         "(write the dataset with `python -m rl.tools.openrlhf_agent make-dataset`)")
    if label.get("tasks_file"):
        source = ("tasks_file", str(label["tasks_file"]))
    elif label.get("split"):
        source = ("split", str(label["split"]))
    elif cfg.env.tasks_file:
        source = ("tasks_file", cfg.env.tasks_file)
    else:
        source = ("split", cfg.env.split)
    return str(label["task_id"]), source


def load_source(kind: str, name: str) -> list:
    from envs.tau2_telecom.tasks import load_split, load_task_file

    if kind == "tasks_file":
        return load_task_file(name, strict=True).tasks
    return load_split(name)


def _resolve_config_path(path: str) -> str:
    # Ray may start the engine actor in another working directory; fall back to the repo root.
    if not os.path.isabs(path) and not os.path.exists(path) and (_REPO_ROOT / path).exists():
        return str(_REPO_ROOT / path)
    return path


@functools.cache
def runtime_for(config_path: str | None, overrides: tuple[str, ...] = ()) -> Runtime:
    cfg = load_config(_resolve_config_path(config_path) if config_path else None, list(overrides))
    if cfg.reward.rm_path and cfg.reward.rm_normalization == "batch":
        raise ConfigError("config key 'reward.rm_normalization': got 'batch', expected 'train_stats' with the "
                          "OpenRLHF plugin, which scores each episode on its own (a batch of one)")
    keys = list(CHECK_COMPONENTS)
    if cfg.reward.rm_path:
        keys += ["rm", "rm_raw"]
    if cfg.reward.judge_weight > 0:
        keys += ["judge", "judge_applied"]  # judge is 0 where a task has no NL assertions; judge_applied says so
    log_keys = tuple(f"reward/{k}" for k in keys) + ("reward/total", "episode/turns", "episode/context_exhausted",
                                                     "episode/scored")
    return Runtime(cfg=cfg, settings=EnvSettings.from_config(cfg), log_keys=log_keys)


def current_runtime() -> Runtime:
    """The runtime of $TELERL_CONFIG / $TELERL_OVERRIDES (schema defaults when unset)."""
    return runtime_for(os.environ.get(CONFIG_ENV) or None, tuple(shlex.split(os.environ.get(OVERRIDES_ENV, ""))))


# --------------------------------------------------------------------------- the OpenRLHF classes


class _EngineTap:
    """Wraps OpenRLHF's llm_engine for one episode and keeps its last completion (token ids, finish reason)."""

    def __init__(self, engine):
        self.engine, self.last = engine, None

    async def generate(self, *args, **kwargs):
        out = await self.engine.generate(*args, **kwargs)
        self.last = out.outputs[0]
        return out


@dataclass
class _EpisodeIO:
    tokenizer: object
    max_length: int
    tap: _EngineTap


# OpenRLHF builds agent instances without arguments; AgentExecutor.execute sets this episode's tokenizer, length
# budget and engine tap here. A ContextVar is per asyncio task, so episodes running concurrently never mix.
_EPISODE: contextvars.ContextVar[_EpisodeIO | None] = contextvars.ContextVar("telerl_openrlhf_episode", default=None)


class TelecomAgent(AgentInstanceBase):
    """One tau2-Telecom episode. Built by OpenRLHF's MultiTurnAgentExecutor; usable alone too (then it renders
    with telerl's own chat template, rl.models.CHAT_TEMPLATE, and does not track the length budget)."""

    def __init__(self, *args, **kwargs):
        self.rt = current_runtime()
        self.io = _EPISODE.get()
        tok = self.io.tokenizer if self.io else None
        if tok is not None and not tok.chat_template:
            raise ValueError("the policy's tokenizer has no chat template (telerl's models carry one; "
                             "rl.models.apply_telerl_template adds it to others)")
        self.tokenizer = tok
        self.eos_text = tok.eos_token if tok is not None else "<|im_end|>"
        self.eos_id = tok.eos_token_id if tok is not None else None
        self.session = None
        self.messages: list[dict] = []
        self.tools: list[dict] | None = None
        self.nl_assertions: list[str] = []
        self.used = 0  # tokens in OpenRLHF's sequence so far (only with self.io)
        self.turns = 0

    # -- rendering (the engine's tokenizer, so the token stream is the policy's chat format)
    def render(self, messages: list[dict]) -> str:
        if self.tokenizer is None:
            from rl.models import render_chat

            return render_chat(messages, self.tools, add_generation_prompt=True)
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, add_generation_prompt=True,
                                                  tokenize=False)

    def count(self, text: str) -> int:
        # The same call OpenRLHF makes, so the budget matches its token count exactly.
        return len(self.tokenizer(text=text, add_special_tokens=False)["input_ids"]) if text else 0

    def feedback(self, action: str, new: list[dict]) -> str:
        """Text to append after the action's tokens: closes the turn if the model did not, then the environment's
        messages and the next generation prompt."""
        before = self.render(self.messages) + action + self.eos_text
        after = self.render(self.messages + [{"role": "assistant", "content": action}] + new)
        if not after.startswith(before):
            raise TemplateNotPrefixStable("appending a turn changed the rendering of earlier turns; the OpenRLHF "
                                          "plugin needs a prefix-stable chat template (see rl/models.py)")
        last = self.io.tap.last if self.io else None
        closed = last is None or (len(last.token_ids) > 0 and last.token_ids[-1] == self.eos_id)
        return after[len(before):] if closed else self.eos_text + after[len(before):]

    # -- OpenRLHF's API
    async def reset(self, states: dict, **kwargs) -> dict:
        task, obs = await asyncio.to_thread(self._start, states["label"])
        self.messages, self.tools = list(obs.messages), obs.tools
        self.nl_assertions = list(task.evaluation_criteria.nl_assertions or []) if task.evaluation_criteria else []
        text = self.render(self.messages)
        if self.io:
            self.used = self.count(text)
            if self.used > self.io.max_length - MIN_TURN_TOKENS:
                # OpenRLHF would cut the prompt from the left - i.e. drop the system prompt and tools.
                raise ValueError(f"task {task.id}: the opening is {self.used} tokens, too long for max_length "
                                 f"{self.io.max_length}; raise --data.max_len or use env.prompt=compact")
        return {**states, "observation": text}

    def _start(self, label):
        task = self.rt.task(label)
        self.session = self.rt.new_session()
        return task, self.session.reset(task, self.rt.cfg.env.mode)

    async def step(self, state_dict: dict, **kwargs) -> dict:
        action = state_dict["action_text"]
        obs = await asyncio.to_thread(self.session.step, action)  # malformed turns come back as error messages
        self.turns += 1
        text = "" if obs.done else self.feedback(action, obs.messages)
        self.messages += [{"role": "assistant", "content": action}] + obs.messages
        exhausted = False
        if self.io and not obs.done:
            last = self.io.tap.last
            self.used += (len(last.token_ids) if last is not None else self.count(action)) + self.count(text)
            exhausted = self.io.max_length - self.used < MIN_TURN_TOKENS
        if not (obs.done or exhausted):
            logs = dict.fromkeys(self.rt.log_keys, 0.0)  # same keys every step: see the module docstring
            logs["episode/turns"] = float(self.turns)
            zero = torch.tensor(0.0)
            return {"rewards": zero, "scores": zero, "environment_feedback": text, "done": False,
                    "extra_logs": logs}
        reward, logs = await asyncio.to_thread(self._score, exhausted)
        value = torch.tensor(reward)
        return {"rewards": value, "scores": value, "environment_feedback": "", "done": True, "extra_logs": logs}

    def _score(self, exhausted: bool) -> tuple[float, dict]:
        # One episode, its own group; OpenRLHF holds the tokens, so the trajectory carries none.
        out = self.rt.score(Trajectory(task_id=self.session.task.id, group=0, messages=self.messages,
                                       eval=self.session.evaluate(), nl_assertions=list(self.nl_assertions)))
        comp = out.components
        logs = {}
        for key in self.rt.log_keys:
            name = key.removeprefix("reward/")
            if key.startswith("reward/") and name in comp:
                logs[key] = float(comp[name])
        if "reward/judge" in self.rt.log_keys:
            logs["reward/judge_applied"] = float(comp.get("judge") is not None)
            logs.setdefault("reward/judge", 0.0)
        logs.update({"reward/total": float(out.reward), "episode/turns": float(self.turns),
                     "episode/context_exhausted": float(exhausted), "episode/scored": 1.0})
        missing = set(self.rt.log_keys) - set(logs)
        if missing:  # a component the config promised but the reward actor did not return
            raise RuntimeError(f"reward components missing from RewardActor output: {sorted(missing)}")
        return float(out.reward), logs


class AgentExecutor(MultiTurnAgentExecutor):
    """What OpenRLHF loads from --agent_func_path: OpenRLHF's own multi-turn loop over TelecomAgent."""

    def __init__(self):
        super().__init__(TelecomAgent)

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        tap = _EngineTap(llm_engine)
        token = _EPISODE.set(_EpisodeIO(hf_tokenizer, max_length, tap))
        try:
            return await super().execute(prompt, label, sampling_params, max_length, hf_tokenizer, tap, images)
        finally:
            _EPISODE.reset(token)


# --------------------------------------------------------------------------- prompt dataset


def make_dataset(cfg: Config, out: str | Path, split: str | None = None, tasks_file: str | None = None,
                 limit: int | None = None) -> int:
    """Write OpenRLHF prompt-dataset JSONL: {"input": the opening conversation (OpenAI messages),
    "label": JSON {"task_id", "split" | "tasks_file"}, "datasource": "tau2-telecom"}. The input is what OpenRLHF
    shows and logs; reset() replaces it by the same opening rendered with the tool schemas. In dual mode the
    opening comes from the scripted customer here (an LLM customer writes its own at reset)."""
    if tasks_file:
        source = ("tasks_file", str(Path(tasks_file).resolve()))
    elif split or not cfg.env.tasks_file:
        source = ("split", split or cfg.env.split)
    else:
        source = ("tasks_file", str(Path(cfg.env.tasks_file).resolve()))
    tasks = load_source(*source)
    mode = cfg.env.mode
    if mode == "solo":
        tasks = [t for t in tasks if t.ticket]  # tau2's solo agent needs the ticket
    tasks = tasks[:limit] if limit else tasks
    rt = Runtime(cfg=cfg, settings=EnvSettings.from_config(cfg), log_keys=())
    session = rt.new_session(scripted_user=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for task in tasks:
            obs = session.reset(task, mode)
            label = json.dumps({"task_id": task.id, source[0]: source[1]})
            fh.write(json.dumps({"input": obs.messages, "label": label, "datasource": "tau2-telecom"}) + "\n")
    return len(tasks)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "make-dataset":
        sys.exit("usage: python -m rl.tools.openrlhf_agent make-dataset --out FILE [--split S | --tasks-file F] "
                 "[--limit N] [--config C] [key=value ...]")

    def add(parser):
        parser.add_argument("--out", required=True, help="JSONL file to write")
        parser.add_argument("--split", default=None, help="tau2 split (default: the config's env.split)")
        parser.add_argument("--tasks-file", default=None, help="a tau2 task JSON file instead of a split")
        parser.add_argument("--limit", type=int, default=None, help="first N tasks only")

    # The subcommand is taken off first: argparse cannot follow one positional with another that takes "*".
    cfg, args = parse_cli(argv[1:], description="make-dataset: OpenRLHF prompt dataset for the telerl plugin",
                          add_arguments=add)
    n = make_dataset(cfg, args.out, args.split, args.tasks_file, args.limit)
    print(f"wrote {n} prompts to {args.out} (mode {cfg.env.mode}, prompt {cfg.env.prompt})")


if __name__ == "__main__":
    main()
