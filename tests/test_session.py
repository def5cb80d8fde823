"""The session API on tau2's real telecom environment and evaluator."""
import json

import pytest

from envs.tau2_telecom.oracle import oracle_turns, play_oracle, tool_call_text
from envs.tau2_telecom.session import SessionLimits, TelecomSession
from envs.tau2_telecom.users import ScriptedUser

AIRPLANE = "[service_issue]airplane_mode_on[PERSONA:None]"
OVERDUE = "[service_issue]overdue_bill_suspension[PERSONA:Easy]"
CONTRACT_END = "[service_issue]contract_end_suspension[PERSONA:Hard]"
REFUEL = "[mobile_data_issue]data_usage_exceeded[PERSONA:Easy]"


@pytest.fixture
def session(world):
    return TelecomSession(world, SessionLimits(max_turns=12, max_errors=4), user=ScriptedUser())


def test_reset_solo_gives_policy_ticket_and_all_tools(session, tasks_by_id):
    task = tasks_by_id[AIRPLANE]
    obs = session.reset(task, "solo")
    system = obs.messages[0]
    assert system["role"] == "system" and "<main_policy>" in system["content"] and task.ticket in system["content"]
    assert obs.messages[1] == {"role": "user", "content": f"Ticket: {task.ticket}"}
    names = {t["function"]["name"] for t in obs.tools}
    assert {"get_customer_by_phone", "refuel_data", "toggle_airplane_mode", "reboot_device", "done"} <= names
    assert len(names) == 13 + 30 + 1
    assert all(t["type"] == "function" and "parameters" in t["function"] for t in obs.tools)
    assert not obs.done and session.env_assertions_now() == [False, True]  # no service; no overdue bill


@pytest.mark.parametrize("mode", ["solo", "dual"])
def test_minimal_prompt_lists_every_tool_in_the_system_prompt(world, tasks_by_id, mode):
    """The minimal prompt hands the chat template no schemas: its system prompt names each tool with its arguments
    and the call format, and an episode played from it is scored like any other."""
    from envs.tau2_telecom.expert import play_expert

    minimal = TelecomSession(world, user=ScriptedUser(), prompt="minimal")
    obs = minimal.reset(tasks_by_id[REFUEL], mode)
    system = obs.messages[0]["content"]
    assert obs.tools is None and "<main_policy>" not in system and '<tool_call>\n{"name": <tool>' in system
    listed = [line for line in system.split("<tools>")[1].splitlines() if "(" in line]
    assert {line.split("(")[0] for line in listed} == {t["function"]["name"] for t in world.tool_schemas(mode)}
    assert "refuel_data(customer_id, line_id, gb_amount)" in listed
    compact = TelecomSession(world, user=ScriptedUser(), prompt="compact")
    compact_obs = compact.reset(tasks_by_id[REFUEL], mode)
    assert len(system) * 3 < len(compact_obs.messages[0]["content"]) + len(json.dumps(compact_obs.tools))
    play_expert(minimal, tasks_by_id[REFUEL], mode)
    assert minimal.evaluate().success


def test_reset_dual_has_greeting_customer_and_agent_tools_only(session, tasks_by_id):
    obs = session.reset(tasks_by_id[AIRPLANE], "dual")
    roles = [m["role"] for m in obs.messages]
    assert roles == ["system", "assistant", "user"]
    assert "555-123-2002" in obs.messages[2]["content"]
    names = {t["function"]["name"] for t in obs.tools}
    assert len(names) == 13 and "toggle_airplane_mode" not in names and "done" not in names


def test_tool_call_runs_tau2_tool_and_returns_its_output(session, tasks_by_id):
    session.reset(tasks_by_id[AIRPLANE], "solo")
    obs = session.step(tool_call_text("get_customer_by_phone", {"phone_number": "555-123-2002"}))
    assert len(obs.messages) == 1 and obs.messages[0]["role"] == "tool"
    assert obs.messages[0]["tool_call_id"] == "t1_0" and obs.messages[0]["name"] == "get_customer_by_phone"
    assert json.loads(obs.messages[0]["content"])["customer_id"] == "C1001"
    assert obs.info == {"tool_calls": 1, "tool_errors": 0, "rejected_calls": 0}


def test_bad_calls_become_error_observations_and_end_the_episode_at_max_errors(session, tasks_by_id):
    session.reset(tasks_by_id[REFUEL], "solo")
    bad_turns = [
        "<tool_call>{not json</tool_call>",
        tool_call_text("set_data_usage", {"customer_id": "C1001", "line_id": "L1002", "data_used_gb": 0}),
        tool_call_text("refuel_data", {"customer_id": "C1001", "line_id": "L1002", "gb_amount": "2"}),
    ]
    for turn in bad_turns:
        obs = session.step(turn)
        assert obs.messages[0]["role"] == "tool" and obs.messages[0]["content"].startswith("Error: ")
        assert not obs.done
    # Nothing of the rejected calls reached tau2: the usage is still over the limit and no call is recorded.
    line = next(ln for ln in session.env.tools.db.lines if ln.line_id == "L1002")
    assert line.data_refueling_gb == 0.0
    assert all(not getattr(m, "tool_calls", None) for m in session.trajectory)
    assert [r["name"] for r in session.rejected] == [None, "set_data_usage", "refuel_data"]
    # A tool that raises inside tau2 (unknown customer) is an error too.
    obs = session.step(tool_call_text("get_customer_by_id", {"customer_id": "C404"}))
    assert obs.messages[0]["content"].startswith("Error") and obs.info["tool_errors"] == 1
    assert obs.done and obs.termination == "too_many_errors"
    result = session.evaluate()
    assert result.reward == 0.0 and result.tool_errors == 4 and result.rejected_calls == 3


def test_valid_and_invalid_calls_in_one_turn_answered_in_order(session, tasks_by_id):
    session.reset(tasks_by_id[AIRPLANE], "solo")
    turn = (tool_call_text("check_status_bar", {}) + "\n" + tool_call_text("no_such_tool", {}) + "\n"
            + tool_call_text("toggle_airplane_mode", {}))
    obs = session.step(turn)
    assert [m["tool_call_id"] for m in obs.messages] == ["t1_0", "t1_1", "t1_2"]
    assert "Airplane Mode" in obs.messages[0]["content"]
    assert obs.messages[1]["content"].startswith("Error: unknown tool 'no_such_tool'")
    assert all(session.env_assertions_now())


def test_solo_text_without_tool_call_ends_like_tau2(session, tasks_by_id):
    session.reset(tasks_by_id[AIRPLANE], "solo")
    obs = session.step("I think you should turn off airplane mode.")
    assert obs.done and obs.termination == "agent_error"
    res = session.evaluate()
    assert res.reward == 0.0 and "agent_error" in res.note


def test_done_tool_stops_and_tau2_scores_the_episode(session, tasks_by_id):
    task = tasks_by_id[AIRPLANE]
    session.reset(task, "solo")
    session.step(tool_call_text("toggle_airplane_mode", {}))
    obs = session.step(tool_call_text("done", {}))
    assert obs.done and obs.termination == "agent_stop"
    res = session.evaluate()
    assert res.reward == 1.0 and res.success and res.reward_basis == ["ENV_ASSERTION"]
    assert res.env_assertions[0] == {"func_name": "assert_service_status",
                                     "arguments": {"expected_status": "connected"}, "met": True}
    assert session.step(tool_call_text("toggle_airplane_mode", {})).messages == []  # over: no more effects


def test_partial_progress_shows_in_components_not_reward(session, tasks_by_id):
    task = tasks_by_id[OVERDUE]
    session.reset(task, "solo")
    for turn in oracle_turns(task, "solo")[:2]:  # payment request + payment, but the line stays suspended
        session.step(turn)
    session.step(tool_call_text("done", {}))
    res = session.evaluate()
    assert res.reward == 0.0 and not res.success
    assert 0.0 < res.action_fraction < 1.0
    assert [c["met"] for c in res.env_assertions] == [False, True]  # service still down, overdue bill paid
    assert res.env_assertion_fraction == 0.5


def test_max_turns_ends_episode(world, tasks_by_id):
    s = TelecomSession(world, SessionLimits(max_turns=2))
    s.reset(tasks_by_id[AIRPLANE], "solo")
    assert not s.step(tool_call_text("check_status_bar", {})).done
    obs = s.step(tool_call_text("check_status_bar", {}))
    assert obs.done and obs.termination == "max_steps" and s.evaluate().reward == 0.0


@pytest.mark.parametrize("mode", ["solo", "dual"])
def test_transfer_task_needs_the_transfer_call(session, tasks_by_id, mode):
    task = tasks_by_id[CONTRACT_END]
    session.reset(task, mode)
    assert all(session.env_assertions_now())  # unfixable: the broken state is what is asserted
    if mode == "solo":
        session.step(tool_call_text("done", {}))
    else:
        obs = session.step("Goodbye, have a great day.")
        assert obs.done and obs.termination == "user_stop"
    assert session.evaluate().reward == 0.0  # the required transfer_to_human_agents is missing
    play_oracle(session, task, mode)
    res = session.evaluate()
    assert res.reward == 1.0 and res.actions[0]["name"] == "transfer_to_human_agents"


def test_dual_mode_customer_performs_requested_phone_actions(session, tasks_by_id):
    session.reset(tasks_by_id[AIRPLANE], "dual")
    obs = session.step("Could you please check your status bar?")
    assert "Airplane Mode" in obs.messages[0]["content"]
    obs = session.step("Please turn off airplane mode on your phone.")
    assert "toggle_airplane_mode" in obs.messages[0]["content"]
    assert all(session.env_assertions_now())
    obs = session.step("Is there anything else I can help you with?")
    assert obs.done and obs.termination == "user_stop"
    assert session.evaluate().success


def test_export_and_restore_mid_episode_continues_identically(world, session, tasks_by_id):
    task = tasks_by_id[OVERDUE]
    turns = oracle_turns(task, "dual")
    session.reset(task, "dual")
    for turn in turns[:2]:
        session.step(turn)
    log = json.loads(json.dumps(session.export_log()))  # must survive JSON (it crosses Ray / disk)
    copy = TelecomSession.restore(world, log, session.limits, user=ScriptedUser())
    assert copy.env.get_db_hash() == session.env.get_db_hash()
    assert copy.env.get_user_db_hash() == session.env.get_user_db_hash()
    assert copy.turns == 2 and len(copy.trajectory) == len(session.trajectory)
    for turn in turns[2:]:
        if not copy.done:
            copy.step(turn)
    assert copy.evaluate().success


def test_restore_refuses_a_log_whose_tool_output_was_tampered(world, session, tasks_by_id):
    session.reset(tasks_by_id[REFUEL], "solo")
    session.step(tool_call_text("refuel_data", {"customer_id": "C1001", "line_id": "L1002", "gb_amount": 2.0}))
    log = session.export_log()
    tool_msg = next(m for m in log["trajectory"] if m["role"] == "tool")
    tool_msg["content"] = json.dumps({"message": "forged"})
    with pytest.raises(ValueError, match="Expected"):
        TelecomSession.restore(world, log)


def test_step_before_reset_is_a_clear_error(world):
    with pytest.raises(RuntimeError, match="reset"):
        TelecomSession(world).step("hi")


def test_dual_mode_without_user_is_a_clear_error(world, tasks_by_id):
    with pytest.raises(ValueError, match="simulated user"):
        TelecomSession(world).reset(tasks_by_id[AIRPLANE], "dual")
