"""The diagnosing expert: solves tau2 telecom tasks from what it sees, one tool call per turn, never the task."""
import inspect
import json
import random

import pytest

from envs.tau2_telecom import replay
from envs.tau2_telecom.expert import (
    CLOSING,
    ExpertAgent,
    parse_ticket,
    play_expert,
    read_transcript,
)
from envs.tau2_telecom.session import TelecomSession
from envs.tau2_telecom.tasks import load_split
from envs.tau2_telecom.tool_calls import parse_assistant_turn
from envs.tau2_telecom.users import ScriptedUser
from tests.conftest import shared_file

REFUEL = "[mobile_data_issue]data_usage_exceeded[PERSONA:Easy]"
WIFI_CALLING = "[mms_issue]bad_wifi_calling[PERSONA:Easy]"
SMS_PERMISSION = "[mms_issue]break_app_sms_permission[PERSONA:None]"


@pytest.fixture
def session(world):
    return TelecomSession(world, user=ScriptedUser())


def run(session, task, mode="solo"):
    episode = play_expert(session, task, mode)
    return episode, session.evaluate()


def tool_names(episode):
    return [json.loads(t.split("<tool_call>")[1].split("</tool_call>")[0])["name"]
            for t in episode.turns if "<tool_call>" in t]


def test_solves_every_small_split_task_in_solo_mode(session):
    results = [run(session, t)[1] for t in load_split("small")]
    assert [r.task_id for r in results if not r.success] == []
    assert all(r.termination == "agent_stop" and r.tool_errors == 0 and r.rejected_calls == 0 for r in results)


def test_solves_the_train_split_in_solo_mode(session, world):
    # Measured: 74/74 on train, 114/114 on base and 2285/2285 on full (solo and dual), at most 26 turns solo.
    tasks = load_split("train")
    ok, turns = 0, []
    for task in tasks:
        episode, result = run(session, task)
        ok += result.success
        turns.append(len(episode.turns))
        table = world.tool_table("solo")
        for turn in episode.turns:  # one valid tool call per turn, in the oracle's markup
            parsed = parse_assistant_turn(turn, table)
            assert len(parsed.calls) == 1 and not parsed.errors and parsed.text == ""
    assert ok == len(tasks) == 74
    assert max(turns) <= 26 < session.limits.max_turns


def test_the_agent_is_given_only_messages(session, tasks_by_id):
    assert list(inspect.signature(ExpertAgent.next_turn).parameters) == ["self", "messages"]
    assert list(inspect.signature(ExpertAgent.__init__).parameters) == ["self", "mode", "max_turns"]

    seen = []

    class Recording(ExpertAgent):
        def next_turn(self, messages):
            seen.append(json.dumps(messages))
            return super().next_turn(messages)

    task = tasks_by_id[REFUEL]
    play_expert(session, task, "solo", agent=Recording("solo"))
    assert session.evaluate().success
    gold = [a.action_id for a in task.evaluation_criteria.actions]
    assert all(task.id not in s and not any(g in s for g in gold) for s in seen)


def test_same_ticket_different_faults_different_actions(session, tasks_by_id):
    a, b = tasks_by_id[WIFI_CALLING], tasks_by_id[SMS_PERMISSION]
    assert a.ticket == b.ticket
    ep_a, res_a = run(session, a)
    ep_b, res_b = run(session, b)
    assert res_a.success and res_b.success
    names_a, names_b = tool_names(ep_a), tool_names(ep_b)
    assert "toggle_wifi_calling" in names_a and "grant_app_permission" not in names_a
    assert "grant_app_permission" in names_b and "toggle_wifi_calling" not in names_b
    # Identical until a tool output differs: the diagnosis, not the ticket, chooses the fix.
    first_diff = next(i for i, (x, y) in enumerate(zip(ep_a.turns, ep_b.turns)) if x != y)
    prefix_a = [m["content"] for o in ep_a.observations[:first_diff] for m in o.messages]
    prefix_b = [m["content"] for o in ep_b.observations[:first_diff] for m in o.messages]
    assert prefix_a[:-1] == prefix_b[:-1] and prefix_a[-1] != prefix_b[-1]


@pytest.mark.parametrize("mode", ["solo", "dual"])
def test_every_turn_is_a_function_of_the_messages_before_it(session, tasks_by_id, mode):
    task = tasks_by_id["[service_issue]overdue_bill_suspension[PERSONA:Easy]"]
    episode, result = run(session, task, mode)
    assert result.success
    messages = list(episode.first.messages)
    for turn, obs in zip(episode.turns, episode.observations):
        assert ExpertAgent(mode).next_turn(messages) == turn  # a fresh agent, the same prefix
        assert ExpertAgent().next_turn(messages) == turn  # the mode told from the messages
        messages += [{"role": "assistant", "content": turn}, *obs.messages]


def test_ticket_amount_and_refusal_are_respected(session, tasks_by_id):
    task = tasks_by_id[REFUEL]
    one_gb = task.model_copy(update={"ticket": task.ticket.replace("refuel 2.0 GB", "refuel 1.0 GB")})
    episode, result = run(session, one_gb)
    refuel = [t for t in episode.turns if "refuel_data" in t]
    assert len(refuel) == 1 and '"gb_amount": 1.0' in refuel[0]
    assert not result.success  # tau2's assertion wants 2.0 GB: the expert follows the ticket, not the checker
    refuses = task.model_copy(update={"ticket": task.ticket.replace("but they will refuel 2.0 GB of data if "
                                                                    "necessary", "and they will not refuel data")})
    episode, _ = run(session, refuses)
    names = tool_names(episode)
    assert "refuel_data" not in names and names[-2:] == ["transfer_to_human_agents", "done"]
    assert parse_ticket("at home in the United States. They will refuel 2.0 GB").abroad is False


GARBAGE = ["", "Error: internal failure", "{}", "[]", "null", "???", "Status Bar:", '{"customer_id": 7}',
           "x" * 3000, "Speed Test Result: fast Mbps", '{"line_id": "L1002"}', "Airplane Mode: MAYBE"]


@pytest.mark.parametrize("mode", ["solo", "dual"])
def test_garbage_observations_never_crash_and_end_the_episode(session, tasks_by_id, mode, world):
    rng = random.Random(0)
    table = world.tool_table("solo")
    for task_id in (REFUEL, WIFI_CALLING, "[service_issue]overdue_bill_suspension[PERSONA:Easy]"):
        for _ in range(4):
            messages = list(session.reset(tasks_by_id[task_id], mode).messages)
            agent = ExpertAgent(mode)
            for _turn in range(30):
                turn = agent.next_turn(messages)
                assert isinstance(turn, str) and turn
                if mode == "solo":
                    parsed = parse_assistant_turn(turn, table)
                    assert len(parsed.calls) == 1 and not parsed.errors
                messages.append({"role": "assistant", "content": turn})
                if '"done"' in turn or turn == "###STOP###":
                    break
                role = "tool" if "<tool_call>" in turn else "user"
                messages.append({"role": role, "tool_call_id": "x", "name": "x", "content": rng.choice(GARBAGE)})
            else:
                pytest.fail(f"no stop within 30 turns on garbage ({mode}, {task_id})")
    # Odd inputs: no messages, content that is not a string, unknown roles.
    assert ExpertAgent("dual").next_turn([]).startswith("Could you please tell me the phone number")
    assert "transfer_to_human_agents" in ExpertAgent("solo").next_turn([{"role": "user", "content": None}])
    odd = [{"role": "system", "content": [{"type": "text", "text": "<ticket>MMS fails, 555-123-2002</ticket>"}]},
           {"role": "critic", "content": "ignore me"}, {"role": "tool", "content": 42}]
    assert "get_customer_by_phone" in ExpertAgent("solo").next_turn(odd)


def test_dual_mode_with_the_scripted_customer(session, tasks_by_id):
    ids = [REFUEL, SMS_PERMISSION, "[service_issue]overdue_bill_suspension[PERSONA:Easy]",
           "[service_issue]contract_end_suspension[PERSONA:Hard]",
           "[mobile_data_issue]user_abroad_roaming_disabled_off[PERSONA:Hard]"]
    for task_id in ids:
        episode, result = run(session, tasks_by_id[task_id], "dual")
        assert result.success and result.termination == "user_stop", task_id
        asks = [t for t in episode.turns if "<tool_call>" not in t]
        assert all("(" in t for t in asks if t not in (CLOSING,) and "How much data" not in t
                   and "TRANSFERRED" not in t)  # phone steps are explicit name(arg=value) requests
        phone_tools = set(session.world.user_tools)
        assert not any(n in phone_tools for n in tool_names(episode))  # carrier tools only as tool calls
    refuel_ep, _ = run(session, tasks_by_id[REFUEL], "dual")
    transcript = read_transcript(refuel_ep.chat_messages(), "dual")
    ask = next(e for e in transcript.events if e.name == "ask_refuel")
    assert "not sure" in ask.output  # the scripted customer cannot name an amount: the policy's 2 GB is used
    assert any('"gb_amount": 2.0' in t for t in refuel_ep.turns)


def run_cli(capsys, *argv):
    code = replay.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_replay_cli_expert_summary_has_success_breakdowns(capsys):
    code, out = run_cli(capsys, "--split", "small", "--agent", "expert")
    s = out["summary"]
    assert code == 0 and s["tasks"] == s["success"] == 20 and s["errors"] == 0 and s["success_rate"] == 1.0
    assert s["by_family"] == {"mms_issue": {"tasks": 6, "success": 6, "rate": 1.0},
                              "mobile_data_issue": {"tasks": 8, "success": 8, "rate": 1.0},
                              "service_issue": {"tasks": 6, "success": 6, "rate": 1.0}}
    assert s["by_faults"] == {"1": {"tasks": 20, "success": 20, "rate": 1.0}}
    assert all(r["turns"] > 0 and r["success"] for r in out["results"])


def test_replay_cli_a_failed_expert_episode_is_a_result_not_an_error(tmp_path, capsys):
    tasks = json.loads(shared_file("tasks_small.json").read_text())[:2]
    impossible = json.loads(json.dumps(tasks[0]))
    impossible["id"] = "[mobile_data_issue]impossible[PERSONA:None]"
    for a in impossible["evaluation_criteria"]["env_assertions"]:
        a["assert_value"] = not a.get("assert_value", True)  # the fixed state now counts as failure
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([impossible, tasks[1]]))
    code, out = run_cli(capsys, "--tasks", str(path), "--agent", "expert")
    assert code == 0 and out["summary"]["success"] == 1 and out["summary"]["errors"] == 0
    assert out["summary"]["by_family"]["mobile_data_issue"] == {"tasks": 2, "success": 1, "rate": 0.5}
    assert replay.main(["--tasks", str(path)]) == 1  # the oracle's semantics are unchanged
    capsys.readouterr()
    assert replay.main(["--split", "small", "--agent", "expert", "--limit", "2"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[2].split() == ["group", "value", "tasks", "success", "rate"]
    assert text[-1].startswith("tasks=2 ") and "success=2" in text[-1]
