"""Customer simulators (scripted and tau2's LLM UserSimulator) and the NL-assertion judge wiring."""
import json

import pytest

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.endpoint import LLMEndpoint
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.users import LLMUser, ScriptedUser, _explicit_calls, _first_person
from tests.openai_stub import ScriptedOpenAI

AIRPLANE = "[service_issue]airplane_mode_on[PERSONA:None]"
PERMS = "[mms_issue]break_app_both_permissions[PERSONA:Hard]"
NET_PREF = "[mobile_data_issue]bad_network_preference[PERSONA:Hard]"


def test_explicit_calls_parse_json_and_tau2_notation(world):
    text = ('Please grant_app_permission(app_name="messaging", permission="sms") and then '
            "set_network_mode_preference(mode=4g_5g_preferred); also reboot_device(). Not refuel_data(x=1).")
    assert _explicit_calls(text, world.user_tools) == [
        ("grant_app_permission", {"app_name": "messaging", "permission": "sms"}),
        ("set_network_mode_preference", {"mode": "4g_5g_preferred"}),
        ("reboot_device", {}),
    ]
    assert _explicit_calls("toggle_data(((", world.user_tools) == []  # unbalanced: ignored, no crash


def test_scripted_user_fixes_permissions_and_network_mode_on_request(world, tasks_by_id):
    for task_id, requests in [
        (PERMS, ['grant_app_permission(app_name="messaging", permission="sms")',
                 'grant_app_permission(app_name="messaging", permission="storage")']),
        (NET_PREF, ["Please change the network mode to 4G/5G preferred."]),
    ]:
        s = TelecomSession(world, user=ScriptedUser())
        s.reset(tasks_by_id[task_id], "dual")
        assert not all(s.env_assertions_now())
        for r in requests:
            s.step(r)
        assert all(s.env_assertions_now()), task_id


def test_scripted_user_answers_from_tool_output_and_gives_up_on_noise(world, tasks_by_id):
    s = TelecomSession(world, user=ScriptedUser(max_stalls=1))
    obs = s.reset(tasks_by_id[AIRPLANE], "dual")
    assert obs.messages[-1]["content"].startswith("Hi, I need help. My phone")  # instructions in first person
    obs = s.step("Can you run a speed test?")
    assert "Speed test failed" in obs.messages[0]["content"] or "Speed Test" in obs.messages[0]["content"]
    assert not s.step("Let me think about the weather.").done
    obs = s.step("Hmm.")
    assert obs.done and obs.termination == "user_stop"


def test_first_person():
    assert _first_person("You are John. Your phone is broken; you want it fixed.") == \
        "I am John. My phone is broken; I want it fixed."


def test_llm_user_runs_tau2_user_simulator_over_openai_endpoint(world, tasks_by_id):
    script = [
        {"content": "Hi, my phone has no service at all."},
        {"tool_calls": [("toggle_airplane_mode", {})]},
        {"content": "I turned airplane mode off and I have signal now. ###STOP###"},
    ]
    with ScriptedOpenAI(script) as server:
        user = LLMUser(LLMEndpoint(model="openai/stub-user", base_url=server.base_url))
        s = TelecomSession(world, user=user)
        obs = s.reset(tasks_by_id[AIRPLANE], "dual")
        assert obs.messages[-1]["content"] == "Hi, my phone has no service at all."
        obs = s.step("Please turn off airplane mode.")
        assert obs.done and obs.termination == "user_stop"
        assert s.evaluate().success  # the simulated customer really acted on tau2's phone
        first = server.requests[0]
        system = first["messages"][0]["content"]
        assert "<scenario>" in system and "555-123-2002" in system  # tau2's guidelines + the task scenario
        assert {t["function"]["name"] for t in first["tools"]} == set(world.user_tools)
        # After its tool call, the simulator was shown the phone's answer.
        assert any(m["role"] == "tool" for m in server.requests[2]["messages"])


def test_llm_user_endpoint_down_ends_episode_as_user_error(world, tasks_by_id):
    user = LLMUser(LLMEndpoint(model="openai/nobody", base_url="http://127.0.0.1:9/v1"))  # discard port: refused
    s = TelecomSession(world, user=user)
    obs = s.reset(tasks_by_id[AIRPLANE], "dual")
    assert obs.done and obs.termination == "user_error"
    res = s.evaluate()
    assert res.reward == 0.0 and "user simulator failed" in res.note and res.failure == "user_error"


def _task_with_nl_assertion(task):
    d = task.model_dump(mode="json")
    d["evaluation_criteria"]["nl_assertions"] = ["The agent tells the customer that airplane mode was the cause."]
    d["evaluation_criteria"]["reward_basis"].append("NL_ASSERTION")
    return t2.Task.model_validate(d)


@pytest.mark.parametrize("met", [True, False])
def test_judge_scores_nl_assertions_through_tau2(world, tasks_by_id, met):
    task = _task_with_nl_assertion(tasks_by_id[AIRPLANE])
    verdict = {"results": [{"expectedOutcome": task.evaluation_criteria.nl_assertions[0],
                            "reasoning": "checked", "metExpectation": met}]}
    with ScriptedOpenAI([{"content": json.dumps(verdict)}]) as server:
        s = TelecomSession(world, judge=LLMEndpoint(model="openai/stub-judge", base_url=server.base_url))
        s.reset(task, "solo")
        s.step('<tool_call>{"name": "toggle_airplane_mode", "arguments": {}}</tool_call>')
        s.step('<tool_call>{"name": "done", "arguments": {}}</tool_call>')
        res = s.evaluate()
        assert res.nl_assertions == [{"assertion": task.evaluation_criteria.nl_assertions[0], "met": met,
                                      "justification": "checked"}]
        assert res.reward == (1.0 if met else 0.0)
        assert "conversation" in server.requests[0]["messages"][-1]["content"]


def test_nl_assertions_without_judge_score_zero_with_a_note(world, tasks_by_id):
    s = TelecomSession(world)
    s.reset(_task_with_nl_assertion(tasks_by_id[AIRPLANE]), "solo")
    s.step('<tool_call>{"name": "done", "arguments": {}}</tool_call>')
    res = s.evaluate()
    assert res.reward == 0.0 and "NL assertions" in res.note and res.failure == "eval_failed"
