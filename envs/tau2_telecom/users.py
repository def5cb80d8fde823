"""Simulated customers for dual mode.

* `LLMUser`: tau2's own UserSimulator (tau2's simulation guidelines, the task's persona and instructions,
  the 30 phone tools) talking to any OpenAI-compatible endpoint through litellm - e.g. a local vLLM server.
* `ScriptedUser`: deterministic and free, for tests and cheap CPU runs. It is an APPROXIMATION of a tau2
  customer: it performs the phone actions the agent clearly asks for - an explicit call such as
  `toggle_airplane_mode()` or `grant_app_permission(app_name="messaging", permission="sms")`, or one of a
  few plain-English requests ("turn off airplane mode", "reboot your phone") - answers questions about the
  phone from tool results, and hangs up when the agent says goodbye or transfers it. It does not improvise,
  refuse, or hold a persona, so success with it overstates success with an LLM customer.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.endpoint import LLMEndpoint
from envs.tau2_telecom.session import TelecomSession

# Plain-English requests -> phone tool (with arguments). Checked in order; each tool fires once per reply.
_REQUESTS: list[tuple[str, str, dict]] = [
    (r"\b(turn|switch)(ing)?\s+off\s+(the\s+|your\s+)?(airplane|flight)\s+mode|\b(disable|toggle)\s+(the\s+|your\s+)?(airplane|flight)\s+mode",
     "toggle_airplane_mode", {}),
    (r"\b(re-?seat|re-?insert|remove and (re)?insert)\w*\s+(the\s+|your\s+)?sim", "reseat_sim_card", {}),
    (r"\b(reboot|restart)\s+(the\s+|your\s+)?(phone|device)", "reboot_device", {}),
    (r"\breset\s+(the\s+|your\s+)?apn", "reset_apn_settings", {}),
    (r"\b(turn|switch)\s+on\s+(the\s+|your\s+)?(mobile|cellular)\s+data"
     r"|\benable\s+(the\s+|your\s+)?(mobile|cellular)\s+data", "toggle_data", {}),
    (r"\b(turn|switch)\s+on\s+(the\s+|your\s+)?(data\s+)?roaming"
     r"|\benable\s+(the\s+|your\s+)?(data\s+)?roaming\s+on\s+your\s+phone", "toggle_roaming", {}),
    (r"\b(turn|switch)\s+off\s+(the\s+|your\s+)?data\s+saver|\bdisable\s+(the\s+|your\s+)?data\s+saver",
     "toggle_data_saver_mode", {}),
    (r"\b(turn|switch)\s+off\s+(the\s+|your\s+)?wi-?fi\s+calling|\bdisable\s+(the\s+|your\s+)?wi-?fi\s+calling",
     "toggle_wifi_calling", {}),
    (r"\bdisconnect\s+(from\s+)?(the\s+|your\s+)?vpn|\b(turn|switch)\s+off\s+(the\s+|your\s+)?vpn",
     "disconnect_vpn", {}),
    (r"\b(make|complete)\s+(the\s+|a\s+)?payment|\bpay\s+(the\s+|your\s+)?bill", "make_payment", {}),
    (r"\b(4g/5g|4g_5g|5g)\s+preferred", "set_network_mode_preference", {"mode": "4g_5g_preferred"}),
]
# Questions about the phone -> read-only tool whose output is the answer.
_QUESTIONS: list[tuple[str, str, dict]] = [
    (r"status\s+bar", "check_status_bar", {}),
    (r"speed\s+test", "run_speed_test", {}),
    (r"network\s+status|signal", "check_network_status", {}),
    (r"sim\s+(card\s+)?status", "check_sim_status", {}),
    (r"apn\s+settings", "check_apn_settings", {}),
    (r"(send|sending)\s+(an\s+)?mms", "can_send_mms", {}),
    (r"payment\s+request", "check_payment_request", {}),
    (r"network\s+mode", "check_network_mode_preference", {}),
]
_GOODBYE = re.compile(r"anything else|have a (great|good|nice) day|goodbye|is resolved|glad I could help", re.I)
_CALL_START = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(")


@dataclass
class ScriptedUser:
    max_stalls: int = 2  # replies without any recognisable request before the customer gives up

    def __post_init__(self):
        self._stalls = 0

    def opening(self, session: TelecomSession) -> str:
        self._stalls = 0
        instr = session.task.user_scenario.instructions
        if isinstance(instr, str):
            return f"Hi, I need help. {_first_person(instr)}"
        parts = [instr.reason_for_call, instr.known_info or ""]
        return "Hi, I need help. " + " ".join(_first_person(p) for p in parts if p).strip()

    def respond(self, session: TelecomSession, agent_text: str) -> str:
        if session.transferred:
            return t2.TRANSFER
        phone_tools = session.world.user_tools
        wanted = _explicit_calls(agent_text, phone_tools) or _matches(_REQUESTS, agent_text)
        asked = [] if wanted else _matches(_QUESTIONS, agent_text)
        todo = (wanted or asked)[: session.limits.max_user_tool_calls]
        if todo:
            self._stalls = 0
            lines = [f"{name}: {session.user_tool_call(name, args).content}" for name, args in todo]
            opener = "Done. Here is what my phone shows:" if wanted else "Here is what I see:"
            return opener + "\n" + "\n".join(lines)
        if _GOODBYE.search(agent_text) or t2.LLMSoloAgent.STOP_TOKEN in agent_text:
            return f"Thanks, bye. {t2.STOP}"
        self._stalls += 1
        if self._stalls > self.max_stalls:
            return f"I don't know what to do with that, I'll call back later. {t2.STOP}"
        return "Sorry, I'm not sure what you want me to do on my phone. Which setting should I change?"


def _matches(table: list[tuple[str, str, dict]], text: str) -> list[tuple[str, dict]]:
    out, seen = [], set()
    for pattern, name, args in table:
        if name not in seen and re.search(pattern, text, re.I):
            out.append((name, dict(args)))
            seen.add(name)
    return out


def _explicit_calls(text: str, phone_tools: dict) -> list[tuple[str, dict]]:
    """`name(k=v, ...)` for phone tool names, values as Python/JSON literals or bare words."""
    out = []
    for m in _CALL_START.finditer(text):
        name = m.group(1)
        if name not in phone_tools:
            continue
        end = _closing_paren(text, m.end() - 1)
        args = _literal_kwargs(text[m.start():end + 1]) if end is not None else None
        if args is not None:
            out.append((name, args))
    return out


def _closing_paren(text: str, open_idx: int) -> int | None:
    depth = 0
    for i in range(open_idx, min(len(text), open_idx + 2000)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


_JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


_BARE_WORD = re.compile(r"=\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(?=[,)])")


def _literal_kwargs(src: str) -> dict | None:
    call = None
    # tau2's own notation writes bare words (mode=4g_only); quote them if the call is not Python as written.
    for attempt in (src, _BARE_WORD.sub(lambda m: f"={json.dumps(m.group(1))}", src)):
        try:
            call = ast.parse(attempt, mode="eval").body
            break
        except (SyntaxError, ValueError, RecursionError):
            continue
    if call is None:
        return None
    if not isinstance(call, ast.Call) or call.args:
        return None
    try:
        return {kw.arg: _literal(kw.value) for kw in call.keywords if kw.arg}
    except ValueError:
        return None


def _literal(node: ast.AST):
    if isinstance(node, ast.Name):  # JSON literals, or a bare word like 4g_only in tau2's own notation
        return _JSON_NAMES.get(node.id, node.id)
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.List):
        return [_literal(v) for v in node.elts]
    return ast.literal_eval(node)


_PRONOUNS = [(r"\bYou are\b", "I am"), (r"\byou are\b", "I am"), (r"\bYou're\b", "I'm"), (r"\bYour\b", "My"),
             (r"\byour\b", "my"), (r"\bYou\b", "I"),
             (r"\b(to|for|with|help|ask|tell|give|at|about|let|call)\s+you\b", r"\1 me"), (r"\byou\b", "I")]


def _first_person(text: str) -> str:
    """tau2's user instructions are written to the customer ("You are John Smith"); say them as the customer."""
    for pattern, repl in _PRONOUNS:
        text = re.sub(pattern, repl, text)
    return text


class LLMUser:
    """tau2's UserSimulator over an OpenAI-compatible endpoint (litellm model name, e.g. "openai/<served-name>")."""

    def __init__(self, endpoint: LLMEndpoint):
        if not endpoint.model:
            raise ValueError("LLMUser: endpoint.model is empty (a litellm model name, e.g. 'openai/<served-name>')")
        self.endpoint = endpoint

    def opening(self, session: TelecomSession) -> str:
        history = [m for m in session.trajectory if isinstance(m, t2.AssistantMessage)]
        self._start(session, history[:-1])
        return self._reply(session, history[-1])

    def respond(self, session: TelecomSession, agent_text: str) -> str:
        if getattr(self, "_sim", None) is None:
            # A session rebuilt from its log (its EnvWorker died): the simulator's state is the conversation so
            # far as the customer saw it - what tau2's orchestrator hands a user simulator on resume.
            self._start(session, [m for m in session.trajectory if t2.is_valid_user_history_message(m)])
        return self._reply(session, t2.AssistantMessage(role="assistant", content=agent_text))

    def _start(self, session: TelecomSession, history: list) -> None:
        tools = list(session.world.user_tools.values())
        self._sim = t2.UserSimulator(tools=tools, instructions=str(session.task.user_scenario),
                                     llm=self.endpoint.model,
                                     llm_args=self.endpoint.litellm_args(num_retries=1))
        self._state = self._sim.get_init_state(message_history=history)

    def _reply(self, session: TelecomSession, message) -> str:
        # Like tau2's orchestrator: the user may act on its phone several times before it answers in text.
        for _ in range(session.limits.max_user_tool_calls + 1):
            # Errors (endpoint down, bad response) propagate: the session ends the episode as user_error.
            msg, self._state = self._sim.generate_next_message(message, self._state)
            if not msg.is_tool_call():
                return msg.content or ""
            # The simulator already appended its own message to its state; record and execute the calls.
            replies = []
            for call in msg.tool_calls:
                reply = session.user_tool_call(call.name, call.arguments)
                replies.append(t2.ToolMessage(id=call.id, role="tool", content=reply.content, requestor="user",
                                              error=reply.error))
            message = replies[0] if len(replies) == 1 else t2.MultiToolMessage(role="tool", tool_messages=replies)
        return f"I have tried many things on my phone; let's stop here. {t2.STOP}"
