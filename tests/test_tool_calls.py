"""Tests for envs/tau2_telecom/tool_calls.py against tau2's real telecom tool signatures."""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

from envs.tau2_telecom.tool_calls import (
    CLOSE_TAG,
    OPEN_TAG,
    ParsedTurn,
    ToolCallError,
    ToolCallLimits,
    ToolCallRequest,
    ToolTable,
    parse_assistant_turn,
)


@functools.cache
def _env():
    from envs.tau2_telecom.tau2_api import telecom_environment

    return telecom_environment.get_environment()


@functools.cache
def _agent_params() -> dict:
    return {t.name: t.params for t in _env().get_tools()}


@functools.cache
def _user_params() -> dict:
    return {t.name: t.params for t in _env().get_user_tools()}


@pytest.fixture(scope="module")
def table() -> ToolTable:
    return ToolTable(_agent_params())


@pytest.fixture(scope="module")
def user_table() -> ToolTable:
    return ToolTable(_user_params())


def tc(name, arguments=None, key="arguments") -> str:
    obj = {"name": name} if arguments is None else {"name": name, key: arguments}
    return f"{OPEN_TAG}{json.dumps(obj)}{CLOSE_TAG}"


REFUEL = {"customer_id": "C1001", "line_id": "L1002", "gb_amount": 2.0}
PHONE = {"phone_number": "555-123-2002"}


def only_error(r: ParsedTurn) -> ToolCallError:
    assert r.calls == [] and len(r.errors) == 1, r
    assert r.errors[0].message.startswith("Error: ")
    return r.errors[0]


# ----------------------------------------------------------------- the real tool table


def test_table_matches_tau2_agent_tools(table):
    assert table.names == frozenset(_agent_params())
    # Signatures this module's messages rely on (tau2 26.3).
    assert "refuel_data" in table.names and "get_customer_by_phone" in table.names
    assert table.signature("refuel_data") == (
        "refuel_data(customer_id: string, line_id: string, gb_amount: number)"
    )
    assert table.signature("get_bills_for_customer") == (
        "get_bills_for_customer(customer_id: string, limit: integer (optional))"
    )
    assert table.signature("nope") is None
    assert ToolTable.from_tools(_env().get_tools()).names == table.names


def test_table_rejects_bad_config():
    with pytest.raises(TypeError):
        ToolTable({"x": dict})
    with pytest.raises(TypeError):
        ToolTable({1: BaseModel})


# ----------------------------------------------------------------- input format 1: tags


def test_hermes_single_call_text_and_id(table):
    r = parse_assistant_turn(
        f"Let me look that up.\n{tc('get_customer_by_phone', PHONE)}\n", table
    )
    assert r.text == "Let me look that up."
    assert r.calls == [ToolCallRequest("call_0", "get_customer_by_phone", PHONE)]
    assert r.errors == [] and r.has_calls


def test_hermes_multiple_calls_whitespace_and_prefix(table):
    turn = (
        "  First.\n"
        f"{OPEN_TAG}\n  {json.dumps({'name': 'get_customer_by_phone', 'arguments': PHONE}, indent=2)}\n{CLOSE_TAG}"
        " middle "
        f"{OPEN_TAG}{json.dumps({'name': 'refuel_data', 'arguments': REFUEL})}{CLOSE_TAG}\n\n"
        "Last.  "
    )
    r = parse_assistant_turn(turn, table, id_prefix="t3")
    assert [(c.id, c.name) for c in r.calls] == [
        ("t3_0", "get_customer_by_phone"),
        ("t3_1", "refuel_data"),
    ]
    assert r.calls[1].arguments == REFUEL
    assert r.text == "First.\n middle \n\nLast."
    assert r.errors == []


def test_hermes_arguments_as_json_string_and_parameters_alias(table):
    turn = tc("get_customer_by_phone", json.dumps(PHONE)) + tc(
        "refuel_data", REFUEL, key="parameters"
    )
    r = parse_assistant_turn(turn, table)
    assert [c.arguments for c in r.calls] == [PHONE, REFUEL]
    assert r.errors == [] and r.text == ""


def test_missing_arguments_means_empty(user_table, table):
    # Zero-argument phone tool: omitted / null / "" arguments are all {}.
    for turn in (
        tc("check_status_bar"),
        tc("check_status_bar", None),
        tc("reboot_device", ""),
    ):
        r = parse_assistant_turn(turn, user_table)
        assert len(r.calls) == 1 and r.calls[0].arguments == {} and r.errors == []
    r = parse_assistant_turn(
        f'{OPEN_TAG}{{"name": "check_sim_status", "arguments": null}}{CLOSE_TAG}',
        user_table,
    )
    assert r.calls[0].arguments == {}
    # A tool with required args still needs them.
    e = only_error(parse_assistant_turn(tc("get_customer_by_id"), table))
    assert "missing required" in e.message and "'customer_id'" in e.message


def test_text_without_calls(table):
    r = parse_assistant_turn("  Hello! How can I help you today?\n", table)
    assert r == ParsedTurn("Hello! How can I help you today?", [], [])
    assert not r.has_calls
    # Stray closing tags are markup, not text.
    assert parse_assistant_turn("Done.</tool_call>", table).text == "Done."


def test_user_tool_table_enum_union(user_table):
    r = parse_assistant_turn(
        tc("set_network_mode_preference", {"mode": "4g_5g_preferred"}), user_table
    )
    assert r.errors == [] and r.calls[0].arguments == {"mode": "4g_5g_preferred"}
    e = only_error(
        parse_assistant_turn(tc("set_network_mode_preference", {"mode": 5}), user_table)
    )
    assert "mode" in e.message


# ----------------------------------------------------------------- input format 2: bare JSON


def test_plain_json_object(table):
    r = parse_assistant_turn(
        '  {"name": "get_customer_by_phone", "arguments": {"phone_number": "1"}}\n',
        table,
    )
    assert r.calls == [
        ToolCallRequest("call_0", "get_customer_by_phone", {"phone_number": "1"})
    ]
    assert r.text == "" and r.errors == []


def test_plain_openai_style_object_and_list(table):
    one = {
        "type": "function",
        "function": {"name": "refuel_data", "arguments": json.dumps(REFUEL)},
    }
    r = parse_assistant_turn(json.dumps(one), table)
    assert r.calls == [ToolCallRequest("call_0", "refuel_data", REFUEL)]
    both = [{"name": "get_customer_by_phone", "arguments": PHONE}, one]
    r = parse_assistant_turn(json.dumps(both), table)
    assert [(c.id, c.name) for c in r.calls] == [
        ("call_0", "get_customer_by_phone"),
        ("call_1", "refuel_data"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"foo": 1}',
        "[1, 2, 3]",
        "[]",
        '[{"name": "x"}, 3]',
        "{not json",
        '"name"',
        "null",
        "42",
    ],
)
def test_json_that_is_not_a_call_is_text(table, text):
    r = parse_assistant_turn(text, table)
    assert r == ParsedTurn(text, [], [])


def test_plain_json_call_errors(table):
    e = only_error(
        parse_assistant_turn('{"name": "set_data_usage", "arguments": {}}', table)
    )
    assert e.name == "set_data_usage" and "unknown tool" in e.message
    # Lenient shape detection, strict argument check: NaN still ends as an error.
    e = only_error(
        parse_assistant_turn(
            '{"name": "refuel_data", "arguments": {"customer_id": "C", "line_id": "L", "gb_amount": NaN}}',
            table,
        )
    )
    assert "NaN" in e.message


# ----------------------------------------------------------------- input format 3: OpenAI dict


def test_openai_message(table):
    msg = {
        "role": "assistant",
        "content": "Checking your line.",
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {
                    "name": "get_customer_by_phone",
                    "arguments": json.dumps(PHONE),
                },
            },
            {
                "type": "function",
                "function": {"name": "refuel_data", "arguments": REFUEL},
            },
            {
                "id": "",
                "type": "function",
                "function": {"name": "bogus", "arguments": "{}"},
            },
        ],
    }
    r = parse_assistant_turn(msg, table)
    assert r.text == "Checking your line."
    assert [(c.id, c.name) for c in r.calls] == [
        ("call_abc", "get_customer_by_phone"),
        ("call_1", "refuel_data"),
    ]
    assert r.calls[1].arguments is REFUEL  # the model's own object, untouched
    assert [(e.id, e.name) for e in r.errors] == [("call_2", "bogus")]


def test_openai_message_ids_are_unique(table):
    fn = {"name": "get_customer_by_phone", "arguments": PHONE}
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "function": fn},
            {"function": fn},
            {"id": "call_1", "function": fn},
        ],
    }
    ids = [c.id for c in parse_assistant_turn(msg, table).calls]
    assert ids[0] == "call_1" and len(set(ids)) == 3


def test_openai_message_content_with_tags_and_bad_items(table):
    msg = {
        "role": "assistant",
        "content": "ok " + tc("get_customer_by_phone", PHONE),
        "tool_calls": [
            5,
            {"function": "refuel_data"},
            {"id": 7, "function": {"name": "refuel_data", "arguments": "[1]"}},
        ],
    }
    r = parse_assistant_turn(msg, table)
    assert r.text == "ok"
    assert [c.id for c in r.calls] == ["call_0"]
    assert [e.id for e in r.errors] == ["call_1", "call_2", "call_3"]
    assert "must be a JSON object" in r.errors[0].message
    assert 'no "name"' in r.errors[1].message
    assert "must be a JSON object, got array" in r.errors[2].message


def test_openai_message_bad_content_or_tool_calls(table):
    r = parse_assistant_turn(
        {
            "role": "assistant",
            "content": 3,
            "tool_calls": [
                {"function": {"name": "get_customer_by_phone", "arguments": PHONE}}
            ],
        },
        table,
    )
    assert len(r.calls) == 1 and r.text == ""
    assert len(r.errors) == 1 and "content" in r.errors[0].message
    r = parse_assistant_turn(
        {"role": "assistant", "content": "hi", "tool_calls": "nope"}, table
    )
    assert r.text == "hi" and "tool_calls" in only_error(r).message
    r = parse_assistant_turn(
        {"role": "assistant", "content": None, "tool_calls": None}, table
    )
    assert r == ParsedTurn("", [], [])
    r = parse_assistant_turn(
        {"role": "assistant", "content": [{"type": "text", "text": " hi "}]}, table
    )
    assert r == ParsedTurn("hi", [], [])


# ----------------------------------------------------------------- input format 4: junk


class _HostileDict(dict):
    def get(self, *a, **k):
        raise RuntimeError("boom")


class _HostileStr(str):
    def find(self, *a, **k):
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "turn",
    [
        None,
        0,
        3.5,
        b"<tool_call>{}</tool_call>",
        ["a", {"name": "x"}],
        {"foo": 1},
        {"role": "user", "content": "hi"},
        object(),
        _HostileDict(content="x"),
        {1, 2},
    ],
)
def test_unreadable_turns(table, turn):
    r = parse_assistant_turn(turn, table)
    e = only_error(r)
    assert r.text == "" and e.id == "call_0" and e.name is None
    assert "could not read the assistant turn" in e.message
    assert r.has_calls  # noqa: PGH005 (a ParsedTurn property, not a mock)


def test_hostile_str_subclass_does_not_raise(table):
    r = parse_assistant_turn(
        _HostileStr("x" + tc("get_customer_by_phone", PHONE)), table
    )
    assert isinstance(r, ParsedTurn)
    assert all(e.message.startswith("Error: ") for e in r.errors)


# ----------------------------------------------------------------- error kinds


def test_malformed_json_keeps_other_calls(table):
    turn = (
        tc("get_customer_by_phone", PHONE)
        + f'{OPEN_TAG}{{"name": "refuel_data", "arguments": {{"gb_amount": 2}}{CLOSE_TAG}'
        + f"{OPEN_TAG}not json at all{CLOSE_TAG}"
        + f"{OPEN_TAG}   {CLOSE_TAG}"
        + tc("refuel_data", REFUEL)
    )
    r = parse_assistant_turn(turn, table)
    assert [c.id for c in r.calls] == ["call_0", "call_4"]
    e1, e2, e3 = r.errors
    assert (
        e1.id == "call_1"
        and e1.name == "refuel_data"
        and "not valid JSON" in e1.message
    )
    assert '\'{"name": "refuel_data"' in e1.message  # quotes the offending text
    assert (
        e2.name is None
        and "not valid JSON" in e2.message
        and "not json at all" in e2.message
    )
    assert "empty" in e3.message


def test_json_error_excerpt_is_short(table):
    junk = "{" + "x" * 5000
    e = only_error(parse_assistant_turn(f"{OPEN_TAG}{junk}{CLOSE_TAG}", table))
    quoted = e.message.split(": '", 1)[1].split("'.")[0]
    assert quoted.startswith("{xxx") and len(quoted) <= 200
    e = only_error(parse_assistant_turn(tc("refuel_data", "{" + "y" * 1000), table))
    assert "not valid JSON" in e.message and "y" * 300 not in e.message


def test_unknown_tool_lists_tools_sorted(table):
    e = only_error(parse_assistant_turn(tc("cancel_everything", {}), table))
    assert e.id == "call_0" and e.name == "cancel_everything"
    assert e.message == (
        "Error: unknown tool 'cancel_everything'. Available tools: "
        + ", ".join(sorted(table.names))
    )


@pytest.mark.parametrize(
    "name",
    [
        "set_data_usage",
        "assert_line_status",
        "assert_data_refueling_amount",
        "_get_line_by_phone",
        "__init__",
        "__class__",
        "__dict__",
        "get_tools",
        "set_user_info",
        "check_status_bar",
    ],
)
def test_simulator_internals_are_not_callable(table, name):
    # Exists on tau2's toolkits (or, for check_status_bar, is a *user* tool): never an agent tool.
    assert hasattr(_env().tools, name) or hasattr(_env().user_tools, name)
    e = only_error(parse_assistant_turn(tc(name, {"customer_id": "C1001"}), table))
    assert e.message.startswith(f"Error: unknown tool '{name}'")


@pytest.mark.parametrize(
    "name, why",
    [
        (None, 'no "name"'),
        (5, "must be a string"),
        (["refuel_data"], "must be a string"),
    ],
)
def test_bad_names(table, name, why):
    e = only_error(
        parse_assistant_turn(
            f"{OPEN_TAG}{json.dumps({'name': name, 'arguments': REFUEL})}{CLOSE_TAG}",
            table,
        )
    )
    assert e.name is None and why in e.message and "Available tools:" in e.message


@pytest.mark.parametrize(
    "args, field",
    [
        ({**REFUEL, "gb_amount": "2"}, "gb_amount"),
        ({**REFUEL, "gb_amount": True}, "gb_amount"),
        ({**REFUEL, "gb_amount": None}, "gb_amount"),
        ({**REFUEL, "customer_id": 1001}, "customer_id"),
        ({**REFUEL, "line_id": ["L1"]}, "line_id"),
    ],
)
def test_wrong_types_strict(table, args, field):
    e = only_error(parse_assistant_turn(tc("refuel_data", args), table))
    assert e.name == "refuel_data" and "invalid argument types" in e.message
    line = next(ln for ln in e.message.splitlines() if ln.startswith(f"- {field}"))
    assert "expected" in line
    assert e.message.endswith(
        "Expected: refuel_data(customer_id: string, line_id: string, gb_amount: number)"
    )


def test_strict_but_int_for_float_ok_and_arguments_not_coerced(table):
    r = parse_assistant_turn(tc("refuel_data", {**REFUEL, "gb_amount": 2}), table)
    (c,) = r.calls
    assert c.arguments["gb_amount"] == 2 and type(c.arguments["gb_amount"]) is int
    e = only_error(
        parse_assistant_turn(
            tc("get_bills_for_customer", {"customer_id": "C1", "limit": "3"}), table
        )
    )
    assert "limit (expected integer)" in e.message
    e = only_error(
        parse_assistant_turn(
            tc("get_bills_for_customer", {"customer_id": "C1", "limit": 3.0}), table
        )
    )
    assert "limit" in e.message


def test_extra_and_missing_keys(table):
    e = only_error(
        parse_assistant_turn(
            tc("refuel_data", {**REFUEL, "gb": 1, "force": True}), table
        )
    )
    assert "unexpected argument(s) 'force', 'gb'" in e.message
    assert "Expected: refuel_data(customer_id: string" in e.message
    e = only_error(
        parse_assistant_turn(tc("suspend_line", {"customer_id": "C1"}), table)
    )
    assert "missing required argument(s) 'line_id', 'reason'" in e.message
    e = only_error(
        parse_assistant_turn(
            tc("suspend_line", {"customer_id": "C1", "line": "L"}), table
        )
    )
    assert (
        "unexpected argument(s) 'line'" in e.message and "missing required" in e.message
    )


def test_non_dict_arguments(table):
    for args, kind in (
        ([1, 2], "array"),
        ('"C1"', "string"),
        (5, "integer"),
        ("[]", "array"),
        (True, "boolean"),
    ):
        e = only_error(parse_assistant_turn(tc("get_customer_by_id", args), table))
        assert f"must be a JSON object, got {kind}" in e.message, e.message


def test_oversized_arguments(table):
    big = {"summary": "x" * 5000}
    e = only_error(parse_assistant_turn(tc("transfer_to_human_agents", big), table))
    assert "too long" in e.message and "limit 4096" in e.message
    e = only_error(
        parse_assistant_turn(tc("transfer_to_human_agents", json.dumps(big)), table)
    )
    assert "too long" in e.message
    ok = {"summary": "x" * 4000}
    assert (
        len(parse_assistant_turn(tc("transfer_to_human_agents", ok), table).calls) == 1
    )
    small = ToolTable(_agent_params(), ToolCallLimits(max_argument_chars=20))
    assert only_error(parse_assistant_turn(tc("get_customer_by_phone", PHONE), small))


def test_too_many_calls(table):
    turn = "".join(tc("get_customer_by_phone", PHONE) for _ in range(11))
    r = parse_assistant_turn(turn, table)
    assert [c.id for c in r.calls] == [f"call_{i}" for i in range(8)]
    assert [e.id for e in r.errors] == ["call_8", "call_9", "call_10"]
    assert all("too many tool calls" in e.message for e in r.errors)
    limited = ToolTable(_agent_params(), ToolCallLimits(max_calls_per_turn=1))
    r = parse_assistant_turn(
        json.dumps([{"name": "get_customer_by_phone", "arguments": PHONE}] * 2), limited
    )
    assert len(r.calls) == 1 and len(r.errors) == 1


def test_unclosed_tag(table):
    r = parse_assistant_turn(
        "Hi "
        + tc("get_customer_by_phone", PHONE)
        + f' bye {OPEN_TAG}{{"name": "refuel_data", "arguments": {{',
        table,
    )
    assert r.text == "Hi  bye"  # the fragment is removed from the text
    assert len(r.calls) == 1
    (e,) = r.errors
    assert e.id == "call_1" and e.name == "refuel_data" and "unclosed" in e.message
    # A new opening tag before any closing tag: the first block was never closed.
    r = parse_assistant_turn(
        f"{OPEN_TAG}{{{OPEN_TAG}{json.dumps({'name': 'get_customer_by_phone', 'arguments': PHONE})}{CLOSE_TAG}",
        table,
    )
    assert [e.id for e in r.errors] == ["call_0"] and [c.id for c in r.calls] == [
        "call_1"
    ]


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_rejected(table, const):
    body = f'{{"customer_id": "C1", "line_id": "L1", "gb_amount": {const}}}'
    e = only_error(
        parse_assistant_turn(
            f'{OPEN_TAG}{{"name": "refuel_data", "arguments": {body}}}{CLOSE_TAG}',
            table,
        )
    )
    assert const.lstrip("-") in e.message
    e = only_error(
        parse_assistant_turn(tc("refuel_data", body), table)
    )  # JSON-string arguments
    assert const.lstrip("-") in e.message
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "function": {
                    "name": "refuel_data",
                    "arguments": {**REFUEL, "gb_amount": float(const)},
                }
            }
        ],
    }
    e = only_error(parse_assistant_turn(msg, table))
    assert "NaN" in e.message


def test_pathological_nesting(table):
    deep = "[" * 100_000 + "]" * 100_000
    roomy = ToolTable(
        _agent_params(), ToolCallLimits(max_turn_chars=10**6)
    )  # reach json.loads
    e = only_error(parse_assistant_turn(f"{OPEN_TAG}{deep}{CLOSE_TAG}", roomy))
    assert "nesting too deep" in e.message
    assert parse_assistant_turn(deep, roomy) == ParsedTurn(
        deep, [], []
    )  # not a call: just text

    e = only_error(
        parse_assistant_turn(tc("refuel_data", "[" * 3000 + "]" * 3000), table)
    )
    assert "Error: " in e.message
    nested: dict = {}
    cur = nested
    for _ in range(50_000):
        cur["a"] = {}
        cur = cur["a"]
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "function": {
                    "name": "refuel_data",
                    "arguments": {**REFUEL, "gb_amount": nested},
                }
            },
            {"function": {"name": "get_customer_by_phone", "arguments": PHONE}},
        ],
    }
    r = parse_assistant_turn(msg, table)
    assert len(r.errors) == 1 and len(r.calls) == 1


def test_turn_truncation():
    t = ToolTable(_agent_params(), ToolCallLimits(max_turn_chars=300))
    first = tc("get_customer_by_phone", PHONE)
    turn = "a" * 100 + first + "b" * 300 + tc("refuel_data", REFUEL)
    r = parse_assistant_turn(turn, t)
    assert [c.name for c in r.calls] == ["get_customer_by_phone"]
    (e,) = r.errors
    assert (
        e.id == "call_1"
        and "too long" in e.message
        and "first 300 characters" in e.message
    )
    assert r.text == "a" * 100 + "b" * (300 - 100 - len(first))
    # A call cut in half by the limit is an unclosed block, plus the truncation error.
    r = parse_assistant_turn("a" * 280 + first, t)
    assert r.calls == [] and len(r.errors) == 2 and "unclosed" in r.errors[0].message


def test_unexpected_pydantic_exception_is_contained():
    class Boom(BaseModel):
        x: int

        @field_validator("x")
        @classmethod
        def explode(cls, v):
            raise RuntimeError("validator bug")

    class Ok(BaseModel):
        y: str

    t = ToolTable({"boom": Boom, "ok": Ok})
    r = parse_assistant_turn(tc("boom", {"x": 1}) + tc("ok", {"y": "z"}), t)
    assert [c.name for c in r.calls] == ["ok"]
    (e,) = r.errors
    assert (
        e.name == "boom"
        and "RuntimeError" in e.message
        and e.message.startswith("Error: ")
    )


def test_pydantic_summary_is_capped_at_five_lines():
    class Many(BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    t = ToolTable({"many": Many})
    e = only_error(parse_assistant_turn(tc("many", {k: "1" for k in "abcdefg"}), t))
    bullets = [ln for ln in e.message.splitlines() if ln.startswith("- ")]
    assert len(bullets) == 6 and bullets[-1] == "- ... and 2 more"


def test_validate_direct_never_raises(table):
    assert isinstance(table.validate("x", "refuel_data", REFUEL), ToolCallRequest)
    for name, args in [
        ({}, {}),
        ("refuel_data", object()),
        ("refuel_data", {object(): 1}),
        ("refuel_data", {**REFUEL, "gb_amount": {1, 2}}),
        (b"refuel_data", REFUEL),
    ]:
        res = table.validate("x", name, args)
        assert isinstance(res, ToolCallError) and res.message.startswith("Error: ")


# ----------------------------------------------------------------- property tests

AGENT = _agent_params()
NAMES = sorted(AGENT)
INTERNAL = [
    "set_data_usage",
    "assert_line_status",
    "_get_line_by_phone",
    "__init__",
    "__class__",
    "get_tools",
    "check_status_bar",
    "Refuel_Data",
    "refuel_data ",
]
LIMITS = ToolCallLimits()
_TABLE = ToolTable(
    AGENT
)  # hypothesis tests can't take module fixtures per example cheaply

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_val = st.recursive(
    json_leaf,
    lambda c: (
        st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4)
    ),
    max_leaves=10,
)
# Per-type wrong values, biased to what lax pydantic would coerce but strict mode must reject
# ("2" -> 2.0, True -> 1.0, 3.0 -> 3): the main way a bad call could slip through.
_WRONG = {
    str: st.sampled_from([7, 2.5, True, None, ["C1"], {"id": "C1"}]),
    float: st.sampled_from(
        [float("nan"), "2", float("-inf"), "2.5", True, "1e3", False, None, [2.0]]
    ),
    int: st.sampled_from(["3", 3.0, 3.5, True, False, None, "", [3]]),
}
safe_text = st.text(max_size=30).filter(
    lambda s: OPEN_TAG not in s and CLOSE_TAG not in s
)


def _value_for(annotation):
    if annotation is str:
        return safe_text
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(
            -(10**6), 10**6
        )
    if annotation is int:
        return st.integers(-(10**6), 10**6)
    return json_val


@st.composite
def valid_args(draw, name):
    args = {}
    for fname, f in AGENT[name].model_fields.items():
        if f.is_required() or draw(st.booleans()):
            args[fname] = draw(_value_for(f.annotation))
    return args


@st.composite
def mutated_args(draw, name):
    args = draw(valid_args(name))
    op = draw(st.sampled_from(["none", "drop", "extra", "retype", "retype", "random"]))
    if op == "drop" and args:
        args.pop(draw(st.sampled_from(sorted(args))))
    elif op == "extra":
        args[draw(st.text(max_size=10))] = draw(json_val)
    elif op == "retype" and args:
        key = draw(st.sampled_from(sorted(args)))
        wrong = _WRONG.get(AGENT[name].model_fields[key].annotation, json_val)
        args[key] = draw(wrong if draw(st.integers(0, 3)) else json_val)
    elif op == "random":
        return draw(json_val)
    return args


@st.composite
def call_obj(draw, real_only=False):
    # Weighted so most calls reach argument validation, and numeric tools (where lax and
    # strict pydantic differ) come up often.
    real = st.sampled_from(NAMES + ["refuel_data", "get_bills_for_customer"] * 3)
    sources = (
        ["real"] if real_only else ["real", "real", "real", "internal", "text", "json"]
    )
    source = draw(st.sampled_from(sources))
    name = draw(
        {
            "real": real,
            "internal": st.sampled_from(INTERNAL),
            "text": st.text(max_size=15),
            "json": json_val,
        }[source]
    )
    args = (
        draw(mutated_args(name))
        if isinstance(name, str) and name in AGENT
        else draw(json_val)
    )
    style = draw(
        st.sampled_from(
            ["args", "args_str", "parameters", "none", "openai", "openai_dict"]
        )
    )
    if style == "args":
        return {"name": name, "arguments": args}
    if style == "args_str":
        return {"name": name, "arguments": json.dumps(args)}
    if style == "parameters":
        return {"name": name, "parameters": args}
    if style == "none":
        return {"name": name}
    if style == "openai":
        return {
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
    return {"type": "function", "function": {"name": name, "arguments": args}}


@st.composite
def block_body(draw):
    kind = draw(st.sampled_from(["call", "call", "call", "json", "text"]))
    if kind == "json":
        return json.dumps(draw(json_val))
    if kind == "text":
        return draw(st.text(max_size=40))
    body = json.dumps(draw(call_obj()), indent=draw(st.sampled_from([None, 2])))
    mutation = draw(
        st.sampled_from(["none", "none", "truncate", "brace", "unbrace", "char", "pad"])
    )
    if mutation == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == "brace":
        body = body + "}"
    elif mutation == "unbrace":
        body = "{" + body
    elif mutation == "char" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = (
            body[:i]
            + draw(st.sampled_from(['"', ",", ":", "]", "NaN", "'", "\\"]))
            + body[i + 1 :]
        )
    elif mutation == "pad":
        body = "\n  " + body + " \n"
    return body


text_piece = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from(["<", ">", "/", "{", "}", '"']),
    max_size=30,
) | st.sampled_from(
    [OPEN_TAG, CLOSE_TAG, "<tool_", "call>", "<tool_call", "tool_call>"]
)


@st.composite
def hermes_turn(draw):
    parts = []
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(["text", "closed", "closed", "unclosed"]))
        if kind == "text":
            parts.append(draw(text_piece))
        elif kind == "closed":
            parts.append(f"{OPEN_TAG}{draw(block_body())}{CLOSE_TAG}")
        else:
            parts.append(f"{OPEN_TAG}{draw(block_body())}")
    return "".join(parts)


@st.composite
def plain_json_turn(draw):
    obj = draw(call_obj() | st.lists(call_obj(), min_size=1, max_size=4) | json_val)
    return (
        draw(st.sampled_from(["", " ", "\n"]))
        + json.dumps(obj)
        + draw(st.sampled_from(["", "\n "]))
    )


@st.composite
def openai_turn(draw):
    msg = {}
    if draw(st.booleans()):
        msg["role"] = draw(st.sampled_from(["assistant", "assistant", "user", None]))
    if draw(st.integers(0, 4)):
        msg["content"] = draw(
            st.none() | hermes_turn() | st.text(max_size=20) | json_val
        )
    if draw(st.integers(0, 4)):
        items = []
        for _ in range(draw(st.integers(0, 10))):
            if draw(st.integers(0, 5)) == 0:
                items.append(draw(json_val))
                continue
            item = draw(call_obj())
            if draw(st.booleans()):
                item["id"] = draw(
                    st.sampled_from(["call_0", "call_1", "x", ""])
                    | st.text(max_size=8)
                    | json_val
                )
            items.append(item)
        msg["tool_calls"] = items if draw(st.integers(0, 8)) else draw(json_val)
    return msg


junk_turn = (
    st.none()
    | st.integers()
    | st.floats()
    | st.binary(max_size=20)
    | st.lists(json_val, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_val, max_size=3)
    | st.builds(object)
)
any_turn = st.one_of(
    hermes_turn(),
    hermes_turn(),
    plain_json_turn(),
    openai_turn(),
    junk_turn,
    st.text(max_size=60),
)


def _is_plain_json_call(s: str) -> bool:
    try:
        v = json.loads(s.strip())
    except Exception:  # noqa: BLE001 (any failure means "not a JSON call")
        return False
    def is_call(o):
        return isinstance(o, dict) and ("name" in o or "function" in o)
    return is_call(v) or (isinstance(v, list) and bool(v) and all(map(is_call, v)))


def check_invariants(turn, r: ParsedTurn) -> None:
    assert isinstance(r, ParsedTurn) and isinstance(r.text, str)
    assert r.has_calls == bool(r.calls or r.errors)
    for c in r.calls:
        assert isinstance(c, ToolCallRequest)
        assert c.name in _TABLE.names
        assert isinstance(c.arguments, dict)
        assert set(c.arguments) <= set(AGENT[c.name].model_fields)
        AGENT[c.name].model_validate(c.arguments, strict=True)  # raises if not valid
        assert (
            len(json.dumps(c.arguments, ensure_ascii=False, allow_nan=False))
            <= LIMITS.max_argument_chars
        )
    for e in r.errors:
        assert isinstance(e, ToolCallError)
        assert isinstance(e.message, str) and e.message.startswith("Error: ")
        assert e.name is None or isinstance(e.name, str)
    ids = [x.id for x in r.calls + r.errors]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)
    if isinstance(turn, str) and len(turn) <= LIMITS.max_turn_chars:
        n = turn.count(OPEN_TAG)
        attempts = len(r.calls) + len(r.errors)
        if n:
            assert attempts == n
            if n <= LIMITS.max_calls_per_turn:
                assert not any("too many tool calls" in e.message for e in r.errors)
        elif not _is_plain_json_call(turn):
            assert attempts == 0
            if CLOSE_TAG not in turn:
                assert r.text == turn.strip()
        assert OPEN_TAG not in r.text and CLOSE_TAG not in r.text


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(any_turn)
def test_fuzz_never_raises_and_only_valid_calls_pass(turn):
    check_invariants(turn, parse_assistant_turn(turn, _TABLE))


@st.composite
def near_valid_turn(draw):
    """A real tool with valid arguments, or with exactly one wrong-typed value; every format."""
    name = draw(st.sampled_from(NAMES + ["refuel_data", "get_bills_for_customer"] * 3))
    args = draw(valid_args(name))
    wrong = bool(draw(st.integers(0, 2)))
    if wrong:
        key = draw(st.sampled_from(sorted(args)))
        args[key] = draw(_WRONG[AGENT[name].model_fields[key].annotation])
    payload = json.dumps(args) if draw(st.booleans()) else args
    call = {"name": name, "arguments": payload}
    fmt = draw(st.sampled_from(["tag", "plain", "openai"]))
    if fmt == "tag":
        turn = (
            f"{draw(safe_text)}{OPEN_TAG}{json.dumps(call)}{CLOSE_TAG}{draw(safe_text)}"
        )
    elif fmt == "plain":
        turn = json.dumps(call)
    else:
        turn = {
            "role": "assistant",
            "content": draw(st.none() | safe_text),
            "tool_calls": [{"id": "c", "type": "function", "function": call}],
        }
    return turn, name, wrong


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(near_valid_turn())
def test_fuzz_near_valid_calls(case):
    # Dense on the dangerous region: one wrong value (incl. ones lax pydantic would coerce,
    # and NaN/Infinity) must always be rejected, and the untouched call always accepted.
    turn, name, wrong = case
    r = parse_assistant_turn(turn, _TABLE)
    if wrong:
        assert r.calls == [] and len(r.errors) == 1 and r.errors[0].name == name
    else:
        assert r.errors == [] and [c.name for c in r.calls] == [name]
    check_invariants(turn, r)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), valid_args(n))),
        min_size=1,
        max_size=8,
    ),
    st.lists(safe_text, min_size=9, max_size=9),
    st.booleans(),
)
def test_fuzz_valid_calls_always_pass(calls, texts, as_string_args):
    turn = texts[0] + "".join(
        tc(n, json.dumps(a) if as_string_args else a) + t
        for (n, a), t in zip(calls, texts[1:])
    )
    r = parse_assistant_turn(turn, _TABLE)
    assert r.errors == []
    assert [(c.id, c.name, c.arguments) for c in r.calls] == [
        (f"call_{i}", n, a) for i, (n, a) in enumerate(calls)
    ]
    check_invariants(turn, r)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hermes_turn(), st.integers(1, 400), st.integers(0, 3))
def test_fuzz_small_limits(turn, max_chars, max_calls):
    # Tight limits exercise truncation and the too-many-calls path on every example.
    t = ToolTable(
        AGENT, ToolCallLimits(max_calls_per_turn=max_calls, max_turn_chars=max_chars)
    )
    r = parse_assistant_turn(turn, t)
    assert len(r.calls) <= max_calls
    assert all(c.name in t.names for c in r.calls)
    assert all(e.message.startswith("Error: ") for e in r.errors)
    truncated = [e for e in r.errors if "only the first" in e.message]
    assert len(truncated) == (len(turn) > max_chars)
    if len(turn) <= max_chars:
        assert len(r.calls) + len(r.errors) == turn.count(OPEN_TAG)
