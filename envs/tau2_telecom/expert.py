"""A scripted support agent that diagnoses from what it sees: tau2's troubleshooting workflow as a policy.

    agent = ExpertAgent(mode="solo")              # or "dual"
    turn = agent.next_turn(messages)              # OpenAI chat messages in -> the next assistant turn (text) out
    episode = play_expert(session, task, "solo")  # the task goes to session.reset only, never to the agent

The expert never sees the task object, its gold actions, initial state or evaluation criteria. Each call it
re-reads the whole conversation - the ticket (solo: the system prompt; dual: the customer's opening message),
its own earlier turns and the tool outputs / customer replies that came back - folds them into what it knows
about the line and the phone (`Knowledge`), and picks the next step with a fixed rule order (`decide`).
Nothing is kept between calls: the same messages always give the same turn.

The rule order follows tau2's tech-support workflow and main policy (../shared/tau2-telecom/):

* always first: customer lookup by the ticket's phone number, then the line with that number (line details);
* the family's symptom check first (service: status bar; mobile data: speed test; MMS: can_send_mms);
* Path 1, service: network status -> airplane mode off -> SIM (missing: reseat; locked: transfer) -> APN
  (broken: reset + reboot) -> line suspension (contract ended: transfer; overdue bills: payment request, the
  customer pays, bill checked Paid, resume line, reboot);
* Path 2.1, no mobile data: phone roaming on / line roaming enabled when abroad, mobile data on, speed test;
  still no connection -> data usage -> refuel (the ticket's amount, at most the policy's 2 GB) -> speed test;
* Path 2.2, slow data: data saver -> network mode preference -> VPN, each fix followed by a speed test;
* Path 3, MMS: after Paths 1 and 2.1, network mode preference, Wi-Fi calling, messaging-app permissions
  (sms, storage), APN / MMSC URL (reset + reboot); each check followed by its fix, then one MMS re-test
  (one re-test, not one per fix, keeps a 9-fault task inside the 30-turn episode limit);
* resolved -> `done` (solo) or a closing message, then the stop token (dual); not resolvable -> transfer.

Turns are small-model friendly: one tool call per turn, a fixed order, fixed phrasing. Solo turns are bare
Hermes `<tool_call>` blocks (the oracle's markup). In dual mode carrier tools are still tool calls, and each
phone step is one request to the customer in the explicit `name(arg=value)` form the scripted customer acts on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from envs.tau2_telecom import tau2_api as t2
from envs.tau2_telecom.oracle import Episode, tool_call_text
from envs.tau2_telecom.session import TelecomSession

STOP_TOKEN = t2.LLMSoloAgent.STOP_TOKEN
DONE = "done"
REFUEL_MAX_GB = 2.0  # main policy: "The maximum amount of data that can be refueled is 2GB."
GOOD_MODE = "4g_5g_preferred"
MMS_PERMISSIONS = ("sms", "storage")  # workflow 3.5: both required
MESSAGING_APP = "messaging"
NO_CONNECTION = "no connection"  # the speed-test label when mobile data is unavailable

# Customer-facing texts (dual mode). Fixed strings: the parser recognises its own earlier turns by them.
CLOSING = "Great, the issue is resolved. Is there anything else I can help you with today?"
TRANSFER_MESSAGE = "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."  # tau2's main policy
ASK_PHONE = "Could you please tell me the phone number of the line you are calling about?"
ASK_REFUEL = "How much data would you like to add?"
CHECK_LEAD = "Please check this on your phone and tell me what it shows:"
DO_LEAD = "Please do this on your phone:"

CARRIER_TOOLS = frozenset({
    "get_customer_by_phone", "get_customer_by_id", "get_customer_by_name", "get_details_by_id", "suspend_line",
    "resume_line", "get_bills_for_customer", "send_payment_request", "get_data_usage", "enable_roaming",
    "disable_roaming", "transfer_to_human_agents", "refuel_data"})
PHONE_TOOLS = frozenset({
    "check_status_bar", "check_network_status", "check_network_mode_preference", "set_network_mode_preference",
    "run_speed_test", "toggle_airplane_mode", "check_sim_status", "reseat_sim_card", "toggle_data",
    "toggle_roaming", "check_data_restriction_status", "toggle_data_saver_mode", "check_apn_settings",
    "set_apn_settings", "reset_apn_settings", "check_wifi_status", "toggle_wifi", "check_wifi_calling_status",
    "toggle_wifi_calling", "check_vpn_status", "connect_vpn", "disconnect_vpn", "check_installed_apps",
    "check_app_status", "check_app_permissions", "grant_app_permission", "can_send_mms", "reboot_device",
    "check_payment_request", "make_payment"})
READS = frozenset({
    "get_customer_by_phone", "get_customer_by_id", "get_customer_by_name", "get_details_by_id",
    "get_bills_for_customer", "get_data_usage", "check_status_bar", "check_network_status",
    "check_network_mode_preference", "run_speed_test", "check_sim_status", "check_data_restriction_status",
    "check_apn_settings", "check_wifi_status", "check_wifi_calling_status", "check_vpn_status",
    "check_installed_apps", "check_app_status", "check_app_permissions", "can_send_mms", "check_payment_request",
    "ask_phone", "ask_refuel"})
# Steps that cannot take mobile-data connectivity away. Any other write (airplane mode, SIM, mobile data,
# roaming, refuel, resume, APN set, ...; also names the expert does not know) means the connection must be
# measured again (Path 2.1's "rerun the speed test").
NOT_CONNECTIVITY = (READS | {"set_network_mode_preference", "toggle_data_saver_mode", "toggle_wifi_calling",
                             "grant_app_permission", "disconnect_vpn", "reset_apn_settings", "reboot_device",
                             "send_payment_request", "make_payment", "transfer_to_human_agents"})
TOGGLED_FACT = {"toggle_airplane_mode": "airplane", "toggle_data": "data_on", "toggle_roaming": "phone_roaming",
                "toggle_data_saver_mode": "saver", "toggle_wifi_calling": "wifi_calling",
                "set_network_mode_preference": "mode", "disconnect_vpn": "vpn", "connect_vpn": "vpn"}

CHECK_CAP = 2  # the same check at most this often with nothing changed in between (garbage must not loop)
FIX_CAP = 2  # the same fix at most this often per episode

FIX_REASONS = {  # dual mode: one short reason before a phone request
    "toggle_airplane_mode": "Airplane Mode is on.",
    "reseat_sim_card": "Your phone does not detect the SIM card.",
    "reset_apn_settings": "Your APN settings need to be reset.",
    "reboot_device": "Your phone needs a restart.",
    "toggle_roaming": "You are abroad and data roaming is off on your phone.",
    "toggle_data": "Mobile data is turned off.",
    "toggle_data_saver_mode": "Data Saver mode is on.",
    "set_network_mode_preference": "Your network mode preference is not the best one.",
    "disconnect_vpn": "A VPN is connected.",
    "toggle_wifi_calling": "Wi-Fi Calling is on.",
    "grant_app_permission": "Your messaging app is missing a permission.",
    "make_payment": "There is a payment request for your overdue bill.",
    "check_payment_request": "I have sent you a payment request for your overdue bill.",
}


# ----------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Act:
    """The expert's next step: a tool (carrier or phone), a message to the customer, or the end."""

    kind: str  # "call" | "say" | "stop"
    name: str = ""
    args: dict = field(default_factory=dict)
    text: str = ""

    def render(self, mode: str) -> str:
        if self.kind == "stop":
            return tool_call_text(DONE, {}) if mode == "solo" else STOP_TOKEN
        if self.kind == "say":
            return self.text
        if mode == "solo" or self.name in CARRIER_TOOLS:
            return tool_call_text(self.name, self.args)
        return phone_request_text(self.name, self.args)


def call(name: str, **args) -> Act:
    return Act("call", name, args)


def phone_request_text(name: str, args: dict) -> str:
    """Dual mode: ask the customer to run one phone tool, in the explicit form the scripted customer acts on."""
    shown = f"{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in args.items())})"
    reason = FIX_REASONS.get(name, "")
    if name in READS:
        return f"{reason} {CHECK_LEAD} {shown}".strip()
    return f"{reason} {DO_LEAD} {shown}".strip()


# ------------------------------------------------------------------------------------ reading the chat
@dataclass
class Event:
    """One step of the episode as the agent saw it: what it ran (or asked) and what came back."""

    name: str  # tool name, or ask_phone / ask_refuel
    args: dict
    output: str
    error: bool = False


@dataclass
class Ticket:
    family: str | None = None  # "service" | "mobile_data" | "mms"
    phone: str | None = None
    abroad: bool = False
    refuel_gb: float | None = None  # amount the ticket (or customer) names
    refuses_refuel: bool = False
    pay_permission: bool = False
    today: str | None = None  # YYYY-MM-DD from the policy text, if shown


@dataclass
class Transcript:
    mode: str
    ticket: Ticket
    events: list[Event]
    turns: int  # assistant turns written so far (dual: not counting tau2's fixed greeting)
    closing_sent: bool = False
    transfer_message_sent: bool = False


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_PHONE_CALL = re.compile(r"\b(" + "|".join(sorted(PHONE_TOOLS, key=len, reverse=True)) + r")\s*\(([^()]*)\)")
_KWARG = re.compile(r"(\w+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^,]+)")
_PHONE_NUMBER = re.compile(r"\b\d{3}-\d{3}-\d{4}\b")


def detect_mode(messages: list[dict]) -> str:
    """solo when the conversation carries a ticket; dual when it opens with the agent's greeting."""
    for m in messages[:3]:
        content = _text(m)
        if "<ticket>" in content or (m.get("role") == "user" and content.startswith("Ticket:")):
            return "solo"
    return "dual"


def read_transcript(messages: list[dict], mode: str | None = None) -> Transcript:
    mode = mode or detect_mode(messages)
    ticket_text, today = "", None
    events: list[Event] = []
    turns = 0
    closing = transfer_msg = False
    seen_user = False
    pending: list[Event] = []  # tool calls waiting for their tool messages
    asked: Event | None = None  # dual: a phone request or question waiting for the customer's reply
    for m in messages:
        role, content = m.get("role"), _text(m)
        if role == "system":
            ticket_text += " " + _between(content, "<ticket>", "</ticket>")
            found = re.search(r"current time is (\d{4}-\d{2}-\d{2})", content)
            today = today or (found.group(1) if found else None)
            continue
        if role == "user":
            if mode == "solo" or not seen_user:
                ticket_text += " " + content
            seen_user = True
            if asked is not None:
                asked.output = content
                events.append(asked)
                asked = None
            continue
        if role == "tool":
            if pending:
                ev = pending.pop(0)
                ev.output = content
                ev.error = content.lstrip().startswith("Error")
                events.append(ev)
            continue
        if role != "assistant":
            continue
        if mode == "dual" and not seen_user:
            continue  # tau2's fixed greeting
        turns += 1
        asked = None
        pending = [Event(n, a, "") for n, a in _tool_calls(m, content)]
        if pending or mode == "solo":
            continue
        phone = _PHONE_CALL.search(content)
        if phone:
            asked = Event(phone.group(1), _kwargs(phone.group(2)), "")
        elif ASK_REFUEL in content:
            asked = Event("ask_refuel", {}, "")
        elif ASK_PHONE in content:
            asked = Event("ask_phone", {}, "")
        closing |= CLOSING in content
        transfer_msg |= TRANSFER_MESSAGE in content
    events.extend(e for e in pending if e.output)
    ticket = parse_ticket(ticket_text, today)
    for ev in events:  # dual: what the customer says about refuelling or their number counts like a ticket
        if ev.name == "ask_refuel":
            amount = _refuel_amount(ev.output)
            ticket.refuel_gb = amount if amount is not None else ticket.refuel_gb
            ticket.refuses_refuel |= bool(re.search(r"\b(no thanks|don't want|do not want|not willing|won't|refuse)",
                                                    ev.output, re.I))
        if ev.name == "ask_phone" and not ticket.phone:
            found = _PHONE_NUMBER.search(ev.output)
            ticket.phone = found.group(0) if found else None
    return Transcript(mode, ticket, events, turns, closing, transfer_msg)


def parse_ticket(text: str, today: str | None = None) -> Ticket:
    t = Ticket(today=today)
    phone = _PHONE_NUMBER.search(text)
    t.phone = phone.group(0) if phone else None
    low = text.lower()
    if "mms" in low or "picture message" in low:
        t.family = "mms"
    elif "mobile data" in low or "internet" in low:
        t.family = "mobile_data"
    elif "service" in low or "signal" in low or "calls" in low:
        t.family = "service"
    t.abroad = "abroad" in low or "traveling" in low or "travelling" in low
    found = re.search(r"refuel\w*\s+(?:up to\s+)?(\d+(?:\.\d+)?)\s*(?:gb|gigabytes?)\b", low)
    t.refuel_gb = float(found.group(1)) if found else None
    t.refuses_refuel = bool(re.search(r"(will not|won't|do not want to|does not want to) refuel", low))
    t.pay_permission = bool(re.search(r"permission to (pay|make payment)", low))
    return t


def _refuel_amount(text: str) -> float | None:
    found = re.search(r"(\d+(?:\.\d+)?)\s*(?:gb|gigabytes?)\b", text, re.I)
    return float(found.group(1)) if found else None


def _text(m: dict) -> str:
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    j = text.find(end, i + 1)
    return text[i + len(start):j] if i >= 0 and j > i else ""


def _tool_calls(m: dict, content: str) -> list[tuple[str, dict]]:
    out = []
    for block in _TOOL_CALL.findall(content):
        try:
            obj = json.loads(block)
        except ValueError:
            out.append(("<unparsed>", {}))
            continue
        if isinstance(obj, dict):
            args = obj.get("arguments", {})
            out.append((str(obj.get("name", "<unparsed>")), args if isinstance(args, dict) else {}))
    for tc in m.get("tool_calls") or []:  # an OpenAI assistant message
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = {}
        out.append((str(fn.get("name", "<unparsed>")), args if isinstance(args, dict) else {}))
    return out


def _kwargs(src: str) -> dict:
    out = {}
    for key, raw in _KWARG.findall(src):
        raw = raw.strip()
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw.strip("'\"")
    return out


# ------------------------------------------------------------------------------------- what it knows
class Knowledge:
    """The latest observed value of each fact, and the event index it was observed at."""

    def __init__(self, transcript: Transcript):
        self.t = transcript
        self.events = transcript.events
        self.facts: dict[str, tuple[object, int]] = {}
        self.lines: dict[str, dict] = {}
        self.bills: dict[str, dict] = {}
        self.customer: dict | None = None
        self.requested: set[str] = set()  # bills a payment request was sent for
        self.paid: set[str] = set()  # bills paid on the phone
        for i, ev in enumerate(self.events):
            self._observe(i, ev)

    # -- facts
    def set(self, name: str, value, i: int) -> None:
        self.facts[name] = (value, i)

    def get(self, name: str, default=None):
        return self.facts.get(name, (default, -1))[0]

    def at(self, name: str) -> int:
        return self.facts.get(name, (None, -1))[1]

    def count(self, name: str, since: int = -1, **args) -> int:
        """How often `name` (with these arguments) was run after event index `since`."""
        return sum(e.name == name and all(e.args.get(k) == v for k, v in args.items())
                   for e in self.events[since + 1:])

    def last(self, names) -> int:
        names = {names} if isinstance(names, str) else names
        return max((i for i, e in enumerate(self.events) if e.name in names), default=-1)

    def last_write(self) -> int:
        return max((i for i, e in enumerate(self.events) if e.name not in READS), default=-1)

    def last_connectivity_write(self) -> int:
        return max((i for i, e in enumerate(self.events) if e.name not in NOT_CONNECTIVITY), default=-1)

    def fresh(self, name: str) -> bool:
        """Observed after the last write: still true of the phone now."""
        return name in self.facts and self.at(name) > self.last_write()

    # -- the line
    @property
    def customer_id(self) -> str | None:
        return (self.customer or {}).get("customer_id")

    @property
    def line(self) -> dict | None:
        want = _digits(self.t.ticket.phone or "")
        for line in self.lines.values():
            if want and _digits(str(line.get("phone_number", ""))) == want:
                return line
        return None

    def contract_ended(self) -> bool:
        line = self.line or {}
        end = line.get("contract_end_date")
        today = self.t.ticket.today or line.get("suspension_start_date")
        return bool(end and today and str(end) < str(today))

    def overdue_bills(self) -> list[str]:
        return [b for b, bill in self.bills.items() if str(bill.get("status", "")).lower() == "overdue"]

    def usage_exceeded(self) -> bool | None:
        used, limit, refuel = (self.get(k) for k in ("data_used", "data_limit", "data_refuel"))
        if None in (used, limit, refuel):
            return None
        return used >= limit + refuel - 1e-9

    # -- folding one event into the facts
    def _observe(self, i: int, ev: Event) -> None:
        out, name = ev.output or "", ev.name
        if name in TOGGLED_FACT:  # the old value no longer holds; the output says the new one (if readable)
            self.set(TOGGLED_FACT[name], None, i)
        if name == "reseat_sim_card":
            self.set("sim", "reseated", i)
        if name == "check_status_bar":
            self.set("bar_check", _bar_service(out), i)
        if name == "run_speed_test":
            self.set("speed", _speed(out), i)
        if name == "can_send_mms":
            low = out.lower()
            self.set("mms", False if "cannot send" in low else True if "can send" in low else None, i)
        if name == "check_app_permissions" or name == "check_app_status":
            self._permissions(i, out)
        if name == "grant_app_permission" and self.get("perms") is not None:
            found = re.search(r"Permission '(\w+)' granted", out)
            if found:
                self.set("perms", self.get("perms") | {found.group(1).lower()}, i)
        if name == "reset_apn_settings" and "reset at reboot" in out.lower():
            self.set("apn_pending", True, i)
        if name == "check_payment_request":
            found = re.search(r"payment request for bill (\w+)", out)
            self.set("payment_request", found.group(1) if found else "", i)
        if name == "make_payment":
            found = re.search(r"has been made for bill (\w+)", out)
            if found:
                self.paid.add(found.group(1))
        if name in CARRIER_TOOLS:
            self._carrier(i, ev)
        else:
            self._phone_text(i, out)

    def _phone_text(self, i: int, out: str) -> None:
        for pattern, fact, conv in _PHONE_FACTS:
            for found in pattern.finditer(out):
                self.set(fact, conv(found.group(1)), i)
        for found in re.finditer(r"Status Bar:\s*([^\n]*)", out):
            bar = found.group(1)
            self.set("service", _bar_service(bar), i)
            self.set("airplane", "Airplane Mode" in bar, i)
        if "Resetting APN settings" in out:  # a reboot applied the pending APN reset: carrier defaults
            self.set("apn_name", "internet", i)
            self.set("mmsc", True, i)
            self.set("apn_pending", False, i)
        sim = _sim_sentence(out)
        if sim:
            self.set("sim", sim, i)
        low = out.lower()
        if "vpn is on and connected" in low:
            self.set("vpn", True, i)
        elif any(s in low for s in ("vpn is turned off", "currently not connected", "vpn disconnected",
                                    "no active vpn")):
            self.set("vpn", False, i)

    def _permissions(self, i: int, out: str) -> None:
        found = re.search(r"has permission for:\s*([^\n.]*)", out)
        if found:
            self.set("perms", {p.strip().lower() for p in found.group(1).split(",") if p.strip()}, i)
        elif "no permissions granted" in out or "None granted" in out:
            self.set("perms", set(), i)
        elif "Permissions Granted:" in out:
            self.set("perms", set(re.findall(r"^\s*-\s*(\w+)\s*$", out.split("Permissions Granted:", 1)[1], re.M)), i)

    def _carrier(self, i: int, ev: Event) -> None:
        if ev.name == "transfer_to_human_agents":
            self.set("transferred", True, i)  # the call itself hands over, whatever came back
        if ev.error:
            return
        data = _json(ev.output)
        name = ev.name
        if name in ("get_customer_by_phone", "get_customer_by_id") and isinstance(data, dict):
            if data.get("customer_id"):
                self.customer = data
        elif name == "get_details_by_id" and isinstance(data, dict):
            self._record(data)
        elif name == "get_bills_for_customer" and isinstance(data, list):
            self.set("bills_listed", True, i)
            for bill in data:
                if isinstance(bill, dict):
                    self._record(bill)
        elif name == "get_data_usage" and isinstance(data, dict):
            for key, fact in (("data_used_gb", "data_used"), ("data_limit_gb", "data_limit"),
                              ("data_refueling_gb", "data_refuel")):
                self.set(fact, _float(data.get(key)), i)
        elif name == "refuel_data":
            if isinstance(data, dict) and _float(data.get("new_data_refueling_gb")) is not None:
                self.set("data_refuel", _float(data["new_data_refueling_gb"]), i)
            self.set("refueled", True, i)
        elif name == "enable_roaming" and "enabled" in ev.output.lower():
            self._line_update(ev.args.get("line_id"), roaming_enabled=True)
        elif name == "resume_line":
            line = data.get("line") if isinstance(data, dict) else None
            if isinstance(line, dict):
                self._record(line)
            elif "resumed" in ev.output.lower():
                self._line_update(ev.args.get("line_id"), status="Active")
        elif name == "send_payment_request" and "sent" in ev.output.lower():
            self.requested.add(str(ev.args.get("bill_id")))

    def _record(self, obj: dict) -> None:
        if obj.get("line_id") and "phone_number" in obj:
            self.lines[str(obj["line_id"])] = obj
        elif obj.get("bill_id"):
            self.bills[str(obj["bill_id"])] = obj
        elif obj.get("customer_id") and "line_ids" in obj:
            self.customer = obj

    def _line_update(self, line_id, **changes) -> None:
        if line_id in self.lines:
            self.lines[line_id] = {**self.lines[line_id], **changes}


def _on(v: str) -> bool:
    return v.strip().lower() in ("on", "yes", "true", "enabled")


_PHONE_FACTS = [
    (re.compile(r"Airplane Mode(?: is now|:)\s*(ON|OFF)", re.I), "airplane", _on),
    (re.compile(r"SIM Card Status:\s*(\w+)", re.I), "sim", str.lower),
    (re.compile(r"Cellular Connection:\s*(\w+)", re.I), "service", lambda v: v.lower() == "connected"),
    (re.compile(r"Mobile Data(?: is now| Enabled:)\s*(ON|OFF|Yes|No)", re.I), "data_on", _on),
    (re.compile(r"Data Roaming(?: is now| Enabled:)\s*(ON|OFF|Yes|No)", re.I), "phone_roaming", _on),
    (re.compile(r"Data Saver mode is (?:now )?(ON|OFF)", re.I), "saver", _on),
    (re.compile(r"Wi-Fi Calling is (?:now|currently turned)\s*(ON|OFF)", re.I), "wifi_calling", _on),
    (re.compile(r"(?:Network Mode Preference|Preferred Network Mode set to):\s*([\w-]+)", re.I), "mode", str.lower),
    (re.compile(r"Current APN Name:\s*(\S+)", re.I), "apn_name", str.lower),
    (re.compile(r"MMSC URL[^:\n]*:\s*([^\n]+)", re.I), "mmsc",
     lambda v: v.strip().lower() not in ("not set", "none", "")),
]


def _bar_service(bar: str) -> bool | None:
    if "Airplane Mode" in bar or "No Signal" in bar:
        return False
    if re.search(r"\b(Poor|Fair|Good|Excellent)\b", bar):
        return True
    return None


def _speed(out: str):
    """(mbps, label) from a speed test; (0.0, 'no connection') when it failed; None when unreadable."""
    found = re.search(r"Speed Test Result:\s*([\d.]+)\s*Mbps\s*\(([^)]*)\)", out, re.I)
    if found:
        return float(found.group(1)), found.group(2).strip().lower()
    if re.search(r"speed test failed|no connection", out, re.I):
        return 0.0, NO_CONNECTION
    return None


def _sim_sentence(out: str) -> str | None:
    low = out.lower()
    if "sim card is active" in low:
        return "active"
    if "no sim card detected" in low:
        return "missing"
    if "locked with a pin" in low:
        return "locked_pin"
    if "locked with a puk" in low:
        return "locked_puk"
    return None


def _json(text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


# ------------------------------------------------------------------------------------------ deciding
class _Escalate(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decide(transcript: Transcript, max_turns: int = 30) -> Act:
    """The next step, from the transcript alone."""
    k = Knowledge(transcript)
    mode = transcript.mode
    # The end of an episode: after a transfer or a closing message, stop.
    if k.get("transferred"):
        if mode == "dual" and not transcript.transfer_message_sent:
            return Act("say", text=TRANSFER_MESSAGE)
        return Act("stop")
    if transcript.closing_sent:
        return Act("stop")
    try:
        act = _next_step(k)
        if act is not None and transcript.turns >= max_turns - 3:  # leave room to hand over properly
            raise _Escalate("The troubleshooting took too many steps")
    except _Escalate as e:
        return call("transfer_to_human_agents", summary=_summary(k, e.reason))
    if act is None:  # resolved
        return Act("say", text=CLOSING) if mode == "dual" else Act("stop")
    return act


def _summary(k: Knowledge, reason: str) -> str:
    where = ", ".join(([f"customer {k.customer_id}"] if k.customer_id else [])
                      + ([f"line {k.line['line_id']}"] if k.line else []))
    return f"{reason}" + (f" ({where})" if where else "") + ". I could not resolve it with my tools."


def _check(k: Knowledge, name: str, **args) -> Act | None:
    """A read, unless it was already tried CHECK_CAP times since the last write (then go on without it)."""
    return call(name, **args) if k.count(name, since=k.last_write(), **args) < CHECK_CAP else None


def _fix(k: Knowledge, name: str, **args) -> Act:
    if k.count(name, **args) >= FIX_CAP:
        raise _Escalate(f"{name} did not take effect")
    return call(name, **args)


def _next_step(k: Knowledge) -> Act | None:
    """None = the ticket's resolution condition holds (just verified)."""
    ticket = k.t.ticket
    if not ticket.phone:
        if k.t.mode == "dual" and k.count("ask_phone") < 2:
            return Act("say", text=ASK_PHONE)
        raise _Escalate("No phone number to look the customer up with")
    if k.customer is None:
        return _check(k, "get_customer_by_phone", phone_number=ticket.phone) or _raise("Customer not found")
    if k.line is None:
        for line_id in k.customer.get("line_ids") or []:
            if line_id not in k.lines and k.count("get_details_by_id", id=line_id) < 2:
                return call("get_details_by_id", id=line_id)
        raise _Escalate(f"No line with phone number {ticket.phone} on the account")
    family = ticket.family or "service"
    return {"service": _service_issue, "mobile_data": _data_issue, "mms": _mms_issue}[family](k)


def _raise(reason: str):
    raise _Escalate(reason)


# -- the three issue families (workflow paths 1, 2, 3)
def _service_issue(k: Knowledge) -> Act | None:
    if k.fresh("bar_check") and k.get("bar_check"):
        return None  # the status bar shows signal
    if "bar_check" not in k.facts:
        return call("check_status_bar")  # step 1.0
    act = _restore_service(k)
    if act:
        return act
    if not k.fresh("bar_check"):
        return _check(k, "check_status_bar") or _raise("Could not confirm service on the status bar")
    raise _Escalate("The status bar still shows no service")


def _data_issue(k: Knowledge) -> Act | None:
    speed = k.get("speed")
    if k.fresh("speed") and speed and speed[1] == "excellent":
        return None  # the speed test is excellent
    if "speed" not in k.facts:
        return call("run_speed_test")  # step 2.0
    if not _connectivity_confirmed(k):  # Path 2.1
        act = _restore_service(k) or _restore_data(k)
        if act:
            return act
    return _speed_up(k)  # Path 2.2


def _mms_issue(k: Knowledge) -> Act | None:
    if k.fresh("mms") and k.get("mms"):
        return None  # MMS can be sent
    if "mms" not in k.facts:
        return call("can_send_mms")  # step 3.0
    act = _restore_service(k)  # 3.1
    if act:
        return act
    if not _connectivity_confirmed(k):  # 3.2 (Path 2.1)
        act = _restore_data(k)
        if act:
            return act
    act = _mms_settings(k)  # 3.3 - 3.6
    if act:
        return act
    if not k.fresh("mms"):
        return _check(k, "can_send_mms") or _raise("Could not confirm MMS")
    raise _Escalate("MMS still fails after every troubleshooting step")


# -- Path 1: no service
def _restore_service(k: Knowledge) -> Act | None:
    if k.get("service") is True:
        return None
    if k.get("airplane") is None or k.get("sim") is None or "service" not in k.facts:
        act = _check(k, "check_network_status")  # 1.1
        if act:
            return act
    if k.get("airplane"):
        return _fix(k, "toggle_airplane_mode")
    sim = k.get("sim")
    if sim in ("locked_pin", "locked_puk"):
        raise _Escalate(f"The SIM card is locked ({sim[-3:].upper()})")  # 1.2: escalate SIM security
    if sim == "missing":
        return _fix(k, "reseat_sim_card")
    if sim == "reseated":
        act = _check(k, "check_sim_status")  # 1.2: check that the SIM is active
        if act:
            return act
    act = _fix_apn(k, mms=False)  # 1.3
    if act:
        return act
    act = _lift_suspension(k)  # 1.4
    if act:
        return act
    raise _Escalate("The phone still has no service")


def _fix_apn(k: Knowledge, mms: bool) -> Act | None:
    if "apn_name" not in k.facts or (mms and "mmsc" not in k.facts):
        act = _check(k, "check_apn_settings")
        if act:
            return act
    broken = k.get("apn_name") == "broken" or (mms and k.get("mmsc") is False)
    if not broken:
        return None
    if not (k.get("apn_pending") and k.at("apn_pending") > k.last("reboot_device")):
        return _fix(k, "reset_apn_settings")
    return _fix(k, "reboot_device")  # the reset applies at reboot


def _lift_suspension(k: Knowledge) -> Act | None:
    line = k.line
    status = str(line.get("status", "")).lower()
    if status in ("suspended", "pending activation"):
        if k.contract_ended():
            raise _Escalate("The line is suspended and its contract has ended")  # policy: may not resume
        if not k.get("bills_listed"):
            return _check(k, "get_bills_for_customer", customer_id=k.customer_id) or _raise("Cannot read the bills")
        for bill in k.overdue_bills():
            act = _pay_bill(k, bill)
            if act:
                return act
        return _fix(k, "resume_line", customer_id=k.customer_id, line_id=line["line_id"])
    if k.count("resume_line") and k.last("reboot_device") < k.last("resume_line"):
        return _fix(k, "reboot_device")  # after a resume the phone needs a reboot to get service
    return None


def _pay_bill(k: Knowledge, bill: str) -> Act | None:
    if k.t.mode == "solo" and not k.t.ticket.pay_permission:
        raise _Escalate(f"Bill {bill} is overdue and the ticket gives no permission to pay it")
    if bill not in k.requested:
        return _fix(k, "send_payment_request", customer_id=k.customer_id, bill_id=bill)
    if bill not in k.paid:
        if k.at("payment_request") < k.last("send_payment_request"):
            act = _check(k, "check_payment_request")
            if act:
                return act
        if k.get("payment_request") == bill:
            return _fix(k, "make_payment")
        raise _Escalate(f"The payment request for bill {bill} did not arrive")
    if k.last("get_details_by_id") < k.last("make_payment") or k.count("get_details_by_id", id=bill) == 0:
        return _check(k, "get_details_by_id", id=bill) or _raise(f"Cannot confirm bill {bill} is paid")
    raise _Escalate(f"Bill {bill} is not shown as paid")


# -- Path 2.1: no mobile data
def _connectivity_confirmed(k: Knowledge) -> bool:
    speed = k.get("speed")
    return bool(speed and speed[1] != NO_CONNECTION and k.at("speed") > k.last_connectivity_write())


def _restore_data(k: Knowledge) -> Act | None:
    line = k.line
    if k.t.ticket.abroad:  # 2.1.2
        if k.get("phone_roaming") is False:
            return _fix(k, "toggle_roaming")
        if line.get("roaming_enabled") is False:
            return _fix(k, "enable_roaming", customer_id=k.customer_id, line_id=line["line_id"])
    if k.get("data_on") is False:  # 2.1.3
        return _fix(k, "toggle_data")
    if k.get("speed") is None or k.at("speed") < k.last_connectivity_write():
        return _check(k, "run_speed_test") or _raise("Cannot measure the data connection")
    # Still no connection: 2.1.4, the line's data usage.
    if k.at("data_used") < 0 or k.at("data_used") < k.last_connectivity_write():
        act = _check(k, "get_data_usage", customer_id=k.customer_id, line_id=line["line_id"])
        if act:
            return act
    if k.usage_exceeded():
        return _refuel(k)
    raise _Escalate("Mobile data still has no connection")


def _refuel(k: Knowledge) -> Act:
    ticket, line = k.t.ticket, k.line
    if k.get("refueled"):
        raise _Escalate("The data limit is still exceeded after refuelling")
    if ticket.refuses_refuel:
        raise _Escalate("The data limit is exceeded and the customer does not want to refuel")
    if k.t.mode == "dual" and not k.count("ask_refuel"):
        return Act("say", text=_refuel_question(k))
    amount = min(ticket.refuel_gb if ticket.refuel_gb else REFUEL_MAX_GB, REFUEL_MAX_GB)
    return _fix(k, "refuel_data", customer_id=k.customer_id, line_id=line["line_id"], gb_amount=float(amount))


def _refuel_question(k: Knowledge) -> str:
    used, limit = k.get("data_used"), k.get("data_limit")
    return (f"Your line has used {used:g} GB of its {limit:g} GB data limit, so mobile data is blocked. "
            f"I can add up to {REFUEL_MAX_GB:g} GB of data for a charge on your next bill. {ASK_REFUEL}")


# -- Path 2.2: slow mobile data
def _speed_up(k: Knowledge) -> Act | None:
    if not k.fresh("speed"):
        return _check(k, "run_speed_test") or _raise("Cannot measure the data speed")  # re-test after each fix
    if "saver" not in k.facts or k.get("saver") is None:  # 2.2.1
        act = _check(k, "check_data_restriction_status")
        if act:
            return act
    if k.get("saver"):
        return _fix(k, "toggle_data_saver_mode")
    act = _fix_network_mode(k)  # 2.2.2
    if act:
        return act
    if k.get("vpn") is None:  # 2.2.3
        act = _check(k, "check_vpn_status")
        if act:
            return act
    if k.get("vpn"):
        return _fix(k, "disconnect_vpn")
    speed = k.get("speed")
    if not speed or speed[1] == NO_CONNECTION:
        raise _Escalate("Mobile data still has no connection")
    raise _Escalate(f"The data speed is still {speed[1]}, not excellent")


def _fix_network_mode(k: Knowledge) -> Act | None:
    if k.get("mode") is None:
        act = _check(k, "check_network_mode_preference")
        if act:
            return act
    mode = k.get("mode")
    if mode is not None and mode != GOOD_MODE:
        return _fix(k, "set_network_mode_preference", mode=GOOD_MODE)
    return None


# -- Path 3: MMS-specific settings
def _mms_settings(k: Knowledge) -> Act | None:
    act = _fix_network_mode(k)  # 3.3: at least 3G (the preference that includes 5G)
    if act:
        return act
    if k.get("wifi_calling") is None:  # 3.4
        act = _check(k, "check_wifi_calling_status")
        if act:
            return act
    if k.get("wifi_calling"):
        return _fix(k, "toggle_wifi_calling")
    if k.get("perms") is None:  # 3.5
        act = _check(k, "check_app_permissions", app_name=MESSAGING_APP)
        if act:
            return act
    perms = k.get("perms")
    for perm in MMS_PERMISSIONS:
        if perms is not None and perm not in perms:
            return _fix(k, "grant_app_permission", app_name=MESSAGING_APP, permission=perm)
    return _fix_apn(k, mms=True)  # 3.6


# ------------------------------------------------------------------------------------------- the agent
class ExpertAgent:
    """A policy over the conversation. `next_turn(messages)` depends on nothing but `messages` (and the
    constructor's settings); it keeps no state between calls."""

    def __init__(self, mode: str | None = None, max_turns: int = 30):
        """mode: "solo" / "dual", or None to tell from the messages. max_turns: the episode's turn limit
        (the expert hands over to a human three turns before it)."""
        if mode not in (None, "solo", "dual"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.max_turns = max_turns

    def decide(self, messages: list[dict]) -> Act:
        return decide(read_transcript(messages, self.mode), self.max_turns)

    def next_turn(self, messages: list[dict]) -> str:
        transcript = read_transcript(messages, self.mode)
        return decide(transcript, self.max_turns).render(transcript.mode)


def play_expert(session: TelecomSession, task: t2.Task, mode: str = "solo",
                agent: ExpertAgent | None = None) -> Episode:
    """Like play_oracle: one episode of the expert. The task goes to session.reset only."""
    episode = Episode(first=session.reset(task, mode))
    agent = agent or ExpertAgent(mode, max_turns=session.limits.max_turns)
    messages = list(episode.first.messages)
    while not session.done:
        turn = agent.next_turn(messages)
        obs = session.step(turn)
        episode.turns.append(turn)
        episode.observations.append(obs)
        messages.append({"role": "assistant", "content": turn})
        messages.extend(obs.messages)
    return episode
