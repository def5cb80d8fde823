"""bench_trl's bridge to TRL: the environment TRL's GRPOTrainer drives must be our TelecomSession, tool for tool.

TRL itself is a bench-only dependency (requirements/bench.txt); what is tested here is the bridge, with what TRL
calls on it: transformers' get_json_schema on each tool method (how TRL puts tools in the prompt), the methods
called with the parsed arguments, reset(**row) and get_reward().
"""
import pytest
from transformers.utils import get_json_schema

from bench.bench_trl import OVER_MESSAGE, load_bench_config, pick_tasks, telecom_env_class
from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.oracle import tool_call_text
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.world import get_world
from rl.runtime import split_tasks


@pytest.fixture(scope="module")
def cfg():
    return load_bench_config("tiny", pick_tasks(3), 8)  # learn_tiny: the minimal prompt


def test_every_tool_is_a_method_whose_schema_is_the_sessions_own(cfg):
    env = telecom_env_class(cfg)()
    compact = get_world(cfg.env.policy).tool_schemas("solo", compact=True)
    assert len(compact) > 40 and any(s["function"]["name"] == "done" for s in compact)
    for schema in compact:
        ours = schema["function"]
        theirs = get_json_schema(getattr(env, ours["name"]))["function"]
        assert theirs["name"] == ours["name"] and theirs["description"] == ours["description"]
        props = theirs["parameters"]["properties"]
        # the same arguments and types; each with a description only because get_json_schema demands one
        assert {k: v["type"] for k, v in props.items()} == {k: v["type"] for k, v in
                                                            ours["parameters"]["properties"].items()}
        assert all(v["description"] for v in props.values())
        assert sorted(theirs["parameters"].get("required", [])) == sorted(ours["parameters"].get("required", []))


def test_gold_actions_through_the_methods_earn_the_full_reward_and_nothing_runs_after_done(cfg):
    env_class, tasks = telecom_env_class(cfg), split_tasks(cfg).train
    for tid in cfg.train.task_ids:
        task = t2.Task.model_validate(tasks[tid])
        env, session = env_class(), TelecomSession(get_world(cfg.env.policy), prompt=cfg.env.prompt)
        assert env.reset(task_id=tid, prompt=[]) is None  # the prompt is the dataset row's
        session.reset(task, mode="solo")
        start = session.evaluate()  # not stopped yet: tau2 scores 0; the partial credit is what holds already
        assert start.reward == 0 and env.get_reward() == pytest.approx(0.25 * start.env_assertion_fraction
                                                                        + 0.25 * start.action_fraction)
        for action in task.evaluation_criteria.actions:
            got = getattr(env, action.name)(**action.arguments)
            want = session.step(tool_call_text(action.name, action.arguments))
            assert got == "\n".join(m["content"] for m in want.messages)
        assert env.done() == ""  # tau2's stop, as the session answers it
        assert env.session.done and env.session.termination == "agent_stop"
        result = env.session.evaluate()
        assert result.success
        assert env.get_reward() == pytest.approx(1.0 + 0.25 * result.env_assertion_fraction
                                                 + 0.25 * result.action_fraction) == pytest.approx(1.5)
        turns = env.session.turns
        assert env.get_customer_by_phone(phone_number="555-123-2002") == OVER_MESSAGE
        assert env.session.turns == turns and env.get_reward() == pytest.approx(1.5)


def test_a_call_the_session_refuses_comes_back_as_its_error_text(cfg):
    env = telecom_env_class(cfg)()
    env.reset(task_id=cfg.train.task_ids[0])
    reply = env.get_customer_by_id(customer_id=12345)  # a number where the schema says string
    assert "customer_id" in reply and "error" in reply.lower()
    assert env.session.tool_errors == 1 and not env.session.done


def test_with_the_minimal_prompt_trl_renders_the_same_prompt_as_telerl(cfg):
    from transformers.utils.chat_template_utils import render_jinja_template

    from bench.bench_trl import NO_SCHEMAS, first_observations
    from rl.models import CHAT_TEMPLATE

    assert cfg.env.prompt == "minimal"
    env = telecom_env_class(cfg)()
    methods = [getattr(env, s["function"]["name"]) for s in get_world(cfg.env.policy).tool_schemas("solo")]
    spec = {"model": "tiny", "tasks": cfg.train.task_ids, "group": 8, "overrides": []}
    for obs in first_observations(spec).values():
        assert obs.tools is None  # the minimal prompt's system text names the tools
        ours, _ = render_jinja_template([obs.messages], tools=None, chat_template=CHAT_TEMPLATE,
                                        add_generation_prompt=True)
        # TRL passes the environment's methods as tools; the template it gets leaves their schemas out
        theirs, _ = render_jinja_template([obs.messages], tools=methods, chat_template=NO_SCHEMAS + CHAT_TEMPLATE,
                                          add_generation_prompt=True)
        with_schemas, _ = render_jinja_template([obs.messages], tools=methods, chat_template=CHAT_TEMPLATE,
                                                add_generation_prompt=True)
        assert theirs == ours and "get_customer_by_phone(" in ours[0]
        assert len(with_schemas[0]) > len(ours[0]) + 2000  # what TRL would have added
