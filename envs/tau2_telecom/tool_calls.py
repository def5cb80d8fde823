# ruff: noqa: BLE001  -- broad excepts are the point: untrusted model output must never raise.
"""Turn one LLM assistant turn into text + validated tool calls + error observations.

Everything an RL policy emits is untrusted: during training it produces malformed JSON,
hallucinated tool names (including the simulator's private helpers), wrong argument
types and absurdly long outputs.  This module is the single gate between that output and
the tau2 environment, so it has two hard guarantees:

* ``parse_assistant_turn`` never raises; anything unreadable becomes a ``ToolCallError``
  whose message (starting with ``"Error: "``) is shown to the agent as the observation;
* a ``ToolCallRequest`` only ever carries a name from the ``ToolTable`` and arguments
  that validate against that tool's pydantic model in strict mode.

Accepted turn formats (see ``parse_assistant_turn``): Hermes/Qwen ``<tool_call>`` blocks
in text, a bare JSON function-call object (or list of them) as the whole text, and an
OpenAI-style assistant message dict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = [
    "ParsedTurn",
    "ToolCallError",
    "ToolCallLimits",
    "ToolCallRequest",
    "ToolTable",
    "parse_assistant_turn",
]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

_CALL_FORMAT_HINT = 'Write each call as <tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>.'
_MAX_ID_CHARS = 256
_MAX_NAME_CHARS = 256
_MAX_PYDANTIC_LINES = 5


@dataclass(frozen=True)
class ToolCallLimits:
    max_calls_per_turn: int = 8  # extra calls beyond this become errors
    max_argument_chars: int = 4096  # len(json.dumps(arguments)) (or of the raw arguments string)
    max_turn_chars: int = 32768  # longer turns are truncated before parsing (+ one error)


@dataclass
class ToolCallRequest:
    """A call that passed validation and may be executed."""

    id: str
    name: str
    arguments: dict  # exactly as the model gave them (decoded JSON), not pydantic-coerced


@dataclass
class ToolCallError:
    """A call (or turn) that failed; ``message`` becomes the agent's observation."""

    id: str
    name: str | None  # None when no name could be read
    message: str  # always starts with "Error: "


@dataclass
class ParsedTurn:
    text: str  # assistant text with every <tool_call> block removed, stripped
    calls: list[ToolCallRequest] = field(default_factory=list)
    errors: list[ToolCallError] = field(default_factory=list)

    @property
    def has_calls(self) -> bool:
        """True if the model attempted any tool call (valid or not)."""
        return bool(self.calls or self.errors)


# --------------------------------------------------------------------------- helpers


def _excerpt(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _kind(v: Any) -> str:
    """JSON-flavoured type name: the agent thinks in JSON, not Python."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _reject_constant(const: str) -> Any:
    raise ValueError(f"{const} is not valid JSON")


def _loads(s: str) -> Any:
    # NaN/Infinity are Python extensions, not JSON; a tool must never receive them.
    return json.loads(s, parse_constant=_reject_constant)


def _json_error_reason(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nesting too deep"
    return _excerpt(str(e) or type(e).__name__, 120)


def _schema_type(prop: dict, defs: dict, depth: int = 0) -> str:
    """Short human type name from a JSON-schema property (for error messages)."""
    if depth > 4:
        return "any"
    if "$ref" in prop:
        target = defs.get(str(prop["$ref"]).rsplit("/", 1)[-1], {})
        if "enum" in target:
            return "one of " + ", ".join(json.dumps(x) for x in target["enum"])
        return _schema_type(target, defs, depth + 1) if target else "object"
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(x) for x in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_schema_type(p, defs, depth + 1) for p in prop[key]]
            return " | ".join(dict.fromkeys(parts))
    t = prop.get("type")
    if isinstance(t, list):
        return " | ".join(map(str, t))
    return str(t) if t else "any"


@dataclass(frozen=True)
class _ToolSpec:
    model: type[BaseModel]
    accepted: frozenset[str]  # keys the model reads
    required: tuple[str, ...]
    types: dict[str, str]  # key -> short type name for messages
    signature: str  # e.g. "refuel_data(customer_id: string, line_id: string, gb_amount: number)"

    @classmethod
    def build(cls, name: str, model: type[BaseModel]) -> _ToolSpec:
        cfg = model.model_config
        by_name = bool(cfg.get("populate_by_name") or cfg.get("validate_by_name"))
        accepted: set[str] = set()
        required: list[str] = []
        keys: list[tuple[str, bool]] = []
        for fname, finfo in model.model_fields.items():
            key = finfo.validation_alias if isinstance(finfo.validation_alias, str) else None
            key = key or finfo.alias or fname
            accepted.add(key)
            if by_name:
                accepted.add(fname)
            if finfo.is_required():
                required.append(key)
            keys.append((key, finfo.is_required()))
        try:
            schema = model.model_json_schema()
            props, defs = schema.get("properties", {}), schema.get("$defs", {})
            types = {k: _schema_type(props.get(k, {}), defs) for k, _ in keys}
        except Exception:  # schema generation is best effort; messages still work without it
            types = {k: "any" for k, _ in keys}
        sig = ", ".join(f"{k}: {types[k]}" + ("" if req else " (optional)") for k, req in keys)
        return cls(model, frozenset(accepted), tuple(required), types, f"{name}({sig})")


class ToolTable:
    """Name -> pydantic parameter model for every tool the agent may call, built once per process."""

    def __init__(
        self,
        params: dict[str, type[BaseModel]],
        limits: ToolCallLimits = ToolCallLimits(),
    ):
        self.limits = limits
        self._specs: dict[str, _ToolSpec] = {}
        for name, model in params.items():
            # Misconfiguration is a programming error, so this (and only this) raises.
            if not isinstance(name, str) or not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"tool {name!r}: expected str -> pydantic model class")
            self._specs[name] = _ToolSpec.build(name, model)
        self.names: frozenset[str] = frozenset(self._specs)
        self._available = ", ".join(sorted(self.names))

    @classmethod
    def from_tools(cls, tools: Iterable[Any], limits: ToolCallLimits = ToolCallLimits()) -> ToolTable:
        """Build from tau2 ``Tool`` objects (anything with ``.name`` and ``.params``)."""
        return cls({t.name: t.params for t in tools}, limits)

    def signature(self, name: str) -> str | None:
        spec = self._specs.get(name)
        return spec.signature if spec else None

    def validate(self, call_id: str, name, arguments) -> ToolCallRequest | ToolCallError:
        """Check one call; never raises."""
        try:
            call_id = call_id if isinstance(call_id, str) else str(call_id)
        except Exception:
            call_id = "call"
        try:
            return self._validate(call_id, name, arguments)
        except Exception as e:  # last line of defence: a bad call must not crash a rollout
            shown = name if isinstance(name, str) and name in self.names else None
            return ToolCallError(
                call_id,
                shown,
                f"Error: could not validate the tool call ({type(e).__name__}).",
            )

    def _validate(self, call_id: str, name, arguments) -> ToolCallRequest | ToolCallError:
        if name is None:
            return ToolCallError(
                call_id,
                None,
                f'Error: tool call has no "name". {_CALL_FORMAT_HINT} Available tools: {self._available}',
            )
        if not isinstance(name, str):
            return ToolCallError(
                call_id,
                None,
                f"Error: tool name must be a string, got {_kind(name)}. Available tools: {self._available}",
            )
        spec = self._specs.get(name)
        if spec is None:
            # Also where simulator internals (set_data_usage, _get_line..., __init__) end up.
            return ToolCallError(
                call_id,
                name[:_MAX_NAME_CHARS],
                f"Error: unknown tool {_excerpt(name, 100)!r}. Available tools: {self._available}",
            )

        def fail(msg: str) -> ToolCallError:
            sep = "\n" if "\n" in msg else " "  # multi-line summaries get the hint on its own line
            return ToolCallError(call_id, name, f"Error: {msg}{sep}Expected: {spec.signature}")

        limit = self.limits.max_argument_chars
        if arguments is None:  # models emit null for zero-argument tools; same as omitted
            arguments = {}
        if isinstance(arguments, str):
            # Size check before decoding so a huge string costs nothing.
            if len(arguments) > limit:
                return fail(f"arguments for tool '{name}' are too long ({len(arguments)} characters, limit {limit}).")
            if not arguments.strip():
                arguments = {}
            else:
                try:
                    arguments = _loads(arguments)
                except Exception as e:
                    return fail(
                        f"arguments for tool '{name}' are not valid JSON "
                        f"({_json_error_reason(e)}): {_excerpt(arguments)!r}."
                    )
        if not isinstance(arguments, dict):
            return fail(f"arguments for tool '{name}' must be a JSON object, got {_kind(arguments)}.")
        try:
            size = len(json.dumps(arguments, ensure_ascii=False, allow_nan=False))
        except Exception as e:
            return fail(
                f"arguments for tool '{name}' are not plain JSON "
                f"(no NaN/Infinity, only strings, numbers, booleans, null, arrays, objects): "
                f"{_json_error_reason(e)}."
            )
        if size > limit:
            return fail(f"arguments for tool '{name}' are too long ({size} characters, limit {limit}).")

        extra = [k for k in arguments if not (isinstance(k, str) and k in spec.accepted)]
        missing = [k for k in spec.required if k not in arguments]
        if extra or missing:
            parts = []
            if extra:
                shown = sorted(_excerpt(str(k), 50) for k in extra)
                more = f" (+{len(shown) - 10} more)" if len(shown) > 10 else ""
                parts.append("unexpected argument(s) " + ", ".join(map(repr, shown[:10])) + more)
            if missing:
                parts.append("missing required argument(s) " + ", ".join(map(repr, missing)))
            return fail(f"invalid arguments for tool '{name}': {'; '.join(parts)}.")

        try:
            spec.model.model_validate(arguments, strict=True)
        except ValidationError as e:
            lines = []
            for err in e.errors(include_url=False)[:_MAX_PYDANTIC_LINES]:
                loc = err.get("loc") or ()
                where = ".".join(str(p) for p in loc) or "arguments"
                expected = spec.types.get(loc[0]) if loc else None
                head = f"{_excerpt(where, 60)}" + (f" (expected {expected})" if expected else "")
                lines.append(
                    f"- {head}: {_excerpt(str(err.get('msg', 'invalid')), 120)}, got {_kind(err.get('input'))}"
                )
            extra_n = e.error_count() - len(lines)
            if extra_n > 0:
                lines.append(f"- ... and {extra_n} more")
            body = "\n".join(lines)
            return fail(f"invalid argument types for tool '{name}':\n{body}")
        except Exception as e:  # RecursionError on deep input, bugs in custom validators, ...
            return fail(f"could not validate arguments for tool '{name}' ({type(e).__name__}).")

        return ToolCallRequest(call_id, name, arguments)


# --------------------------------------------------------------------------- parsing


@dataclass
class _Bad:
    """Extraction failure for one attempted call."""

    name: str | None
    message: str


_NAME_RE = re.compile(r'"name"\s*:\s*"([A-Za-z0-9_.\-]{1,100})"')


def _guess_name(fragment: str, table: ToolTable) -> str | None:
    # Only used to make errors for broken JSON more specific; never to run anything.
    m = _NAME_RE.search(fragment[:4096])
    return m.group(1) if m and m.group(1) in table.names else None


def _from_obj(obj: Any) -> tuple[Any, Any] | _Bad:
    """(name, arguments) from {"name","arguments"|"parameters"} or {"function": {...}}."""
    if not isinstance(obj, dict):
        return _Bad(
            None,
            f'Error: a tool call must be a JSON object with "name" and "arguments", '
            f"got {_kind(obj)}. {_CALL_FORMAT_HINT}",
        )
    fn = obj.get("function")
    src = fn if isinstance(fn, dict) else obj
    if "arguments" in src:
        args = src["arguments"]
    elif "parameters" in src:
        args = src["parameters"]
    else:
        args = {}
    return src.get("name"), args


def _from_block(body: str, closed: bool, table: ToolTable) -> tuple[Any, Any] | _Bad:
    if not closed:
        return _Bad(
            _guess_name(body, table),
            f"Error: unclosed {OPEN_TAG} tag (missing {CLOSE_TAG}); the call was not executed. " + _CALL_FORMAT_HINT,
        )
    b = body.strip()
    if not b:
        return _Bad(None, f"Error: empty {OPEN_TAG} block. {_CALL_FORMAT_HINT}")
    try:
        obj = _loads(b)
    except Exception as e:
        name = _guess_name(b, table)
        which = f" for '{name}'" if name else ""
        return _Bad(
            name,
            f"Error: tool call{which} is not valid JSON ({_json_error_reason(e)}): "
            f"{_excerpt(b)!r}. {_CALL_FORMAT_HINT}",
        )
    return _from_obj(obj)


def _split_blocks(s: str) -> tuple[str, list[tuple[str, bool]]]:
    """Remove <tool_call> blocks from s; return (remaining text, [(body, closed)])."""
    pieces: list[str] = []
    blocks: list[tuple[str, bool]] = []
    pos, close = 0, -2  # -2: not searched yet; -1: no closing tag left in s
    while True:
        start = s.find(OPEN_TAG, pos)
        if start < 0:
            pieces.append(s[pos:])
            break
        pieces.append(s[pos:start])
        body_start = start + len(OPEN_TAG)
        # Cached across iterations: avoids O(n^2) rescans when many tags are unclosed.
        if close != -1 and close < body_start:
            close = s.find(CLOSE_TAG, body_start)
        nxt = s.find(OPEN_TAG, body_start)
        if close >= 0 and (nxt < 0 or close < nxt):
            blocks.append((s[body_start:close], True))
            pos = close + len(CLOSE_TAG)
        else:
            # A new opening tag (or the end) comes first: this block was never closed.
            # Stopping at the next tag keeps one attempt per opening tag.
            end = nxt if nxt >= 0 else len(s)
            blocks.append((s[body_start:end], False))
            pos = end
    return "".join(pieces), blocks


def _clean_text(text: str) -> str:
    # Stray tags are markup, not words for the user; loop because removal can join
    # fragments into a new tag ("<tool_<tool_call>call>").
    while OPEN_TAG in text or CLOSE_TAG in text:
        text = text.replace(OPEN_TAG, "").replace(CLOSE_TAG, "")
    return text.strip()


def _as_plain_calls(s: str) -> list | None:
    """The whole text as a bare JSON call object / list of them, else None (= plain text)."""
    st = s.strip()
    if not st or st[0] not in "{[":
        return None
    try:
        # Lenient here (NaN allowed) only to recognise the shape; validate() rejects NaN later.
        v = json.loads(st)
    except Exception:
        return None

    def is_call(o: Any) -> bool:
        return isinstance(o, dict) and ("name" in o or "function" in o)

    if is_call(v):
        return [v]
    if isinstance(v, list) and v and all(is_call(o) for o in v):
        return v
    return None


class _TurnBuilder:
    def __init__(self, table: ToolTable, prefix: str):
        self.table = table
        self.limits = table.limits
        self.prefix = prefix
        self.n = 0
        self.used: set[str] = set()
        self.calls: list[ToolCallRequest] = []
        self.errors: list[ToolCallError] = []
        self.turn_messages: list[str] = []  # turn-level errors; ids assigned after the calls

    def _new_id(self, given: Any = None) -> str:
        i = self.n
        self.n += 1
        ok = isinstance(given, str) and 0 < len(given) <= _MAX_ID_CHARS and given not in self.used
        cid = given if ok else f"{self.prefix}_{i}"
        k = 1
        while cid in self.used:  # a model-given id may collide with a generated one
            cid = f"{self.prefix}_{i}_{k}"
            k += 1
        self.used.add(cid)
        return cid

    def attempt(self, extract: Callable[[], tuple[Any, Any] | _Bad], given_id: Any = None) -> None:
        """One attempted call; any failure stays confined to this call."""
        cid = self._new_id(given_id)
        if self.n > self.limits.max_calls_per_turn:
            # One error per extra call so every call id still gets an observation.
            self.errors.append(
                ToolCallError(
                    cid,
                    None,
                    f"Error: too many tool calls in one turn (limit "
                    f"{self.limits.max_calls_per_turn}); this call was not executed. "
                    "Make fewer calls per turn.",
                )
            )
            return
        try:
            got = extract()
            if isinstance(got, _Bad):
                self.errors.append(ToolCallError(cid, got.name, got.message))
                return
            res = self.table.validate(cid, *got)
        except Exception as e:
            res = ToolCallError(cid, None, f"Error: could not read the tool call ({type(e).__name__}).")
        (self.calls if isinstance(res, ToolCallRequest) else self.errors).append(res)

    def parse_text(self, s: str) -> str:
        limit = self.limits.max_turn_chars
        if len(s) > limit:
            self.turn_messages.append(
                f"Error: the message was too long ({len(s)} characters); only the first "
                f"{limit} characters were read. Keep messages shorter."
            )
            s = s[:limit]
        if OPEN_TAG not in s:
            objs = _as_plain_calls(s)
            if objs is not None:
                for o in objs:
                    self.attempt(lambda o=o: _from_obj(o))
                return ""
            return _clean_text(s)
        text, blocks = _split_blocks(s)
        for body, closed in blocks:
            self.attempt(lambda b=body, c=closed: _from_block(b, c, self.table))
        return _clean_text(text)

    def parse_message(self, msg: dict) -> str | None:
        """OpenAI assistant message; None if it is not one."""
        if msg.get("role", "assistant") != "assistant" or not ("content" in msg or "tool_calls" in msg):
            return None
        content = msg.get("content")
        text = ""
        if isinstance(content, str):
            # Servers without a tool parser leave <tool_call> blocks in content.
            text = self.parse_text(content)
        elif isinstance(content, list) and all(
            isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content
        ):
            text = self.parse_text("".join(p.get("text", "") for p in content))
        elif content is not None:
            self.turn_messages.append(
                f"Error: could not read the message content (got {_kind(content)}); it must be a string."
            )
        tool_calls = msg.get("tool_calls")
        if isinstance(tool_calls, dict):
            tool_calls = [tool_calls]
        if isinstance(tool_calls, (list, tuple)):
            for item in tool_calls:
                given = item.get("id") if isinstance(item, dict) else None
                self.attempt(lambda it=item: _from_obj(it), given)
        elif tool_calls is not None:
            self.turn_messages.append(f"Error: tool_calls must be a list of calls, got {_kind(tool_calls)}.")
        return text

    def finish(self, text: str) -> ParsedTurn:
        for m in self.turn_messages:
            self.errors.append(ToolCallError(self._new_id(), None, m))
        return ParsedTurn(text, self.calls, self.errors)


def _unreadable(prefix: str, what: str) -> ParsedTurn:
    return ParsedTurn(
        "",
        [],
        [
            ToolCallError(
                f"{prefix}_0",
                None,
                f"Error: could not read the assistant turn ({what}); expected text or an "
                "assistant message with content/tool_calls.",
            )
        ],
    )


def parse_assistant_turn(turn, table: ToolTable, id_prefix: str = "call") -> ParsedTurn:
    """Split one assistant turn into text, validated calls and error observations.

    ``turn`` may be a string (``<tool_call>`` blocks anywhere, or a bare JSON call object /
    list as the whole text) or an OpenAI assistant message dict.  Anything else yields one
    error.  Never raises.
    """
    prefix = id_prefix if isinstance(id_prefix, str) and id_prefix else "call"
    try:
        b = _TurnBuilder(table, prefix)
        if isinstance(turn, str):
            return b.finish(b.parse_text(turn))
        if isinstance(turn, dict):
            text = b.parse_message(turn)
            if text is None:
                return _unreadable(prefix, "got a dict that is not an assistant message")
            return b.finish(text)
        return _unreadable(prefix, f"got {_kind(turn)}")
    except Exception as e:  # e.g. a str/dict subclass with hostile methods
        return _unreadable(prefix, type(e).__name__)
