"""One conversation record, as people publish it, normalised to what a chat template reads.

Accepted records (one per JSONL line, JSON array item or Parquet row):

    {"messages" | "conversations" | "conversation": [...], "tools": [...] | "<json>", "system": "..."}

Messages in the OpenAI chat format (`role` + `content`) or ShareGPT (`from` + `value`), with:

- `content` a string, null (assistant tool-call turns) or a list of typed parts: text parts
  (`{"type": "text", "text": ...}` or LLaMA-Factory's `{"type": "text", "value": ...}`) and
  LLaMA-Factory's `reasoning`, `tool_call` and `tools` parts. Image, audio, video and file parts are
  rejected with the part type named: this tool prepares text-only data;
- assistant `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments"}}`, arguments an
  object or a JSON string, parsed to an object as transformers' chat templates expect), the legacy
  `function_call`, and ShareGPT / LLaMA-Factory `function_call` turns (value: JSON `{name, arguments}` or
  a list of them) which become an assistant turn with tool calls;
- tool results: role `tool` (with `tool_call_id` / `name`), `function`, `ipython`, ShareGPT `observation`;
- assistant reasoning in `reasoning_content` (or `reasoning` / `thinking`);
- per-message training flags: `train` (bool), `weight` or `loss_weight` (0 = not trained, 1 = trained,
  another number >= 0 = trained with that loss weight: carried as Conversation.weights; the outputs
  have per-token weights only under the `loss_weights` setting, and reject such records otherwise).

Conversation-level `tools` (function specs, bare or wrapped as `{"type": "function", "function": ...}`;
a JSON string or a list) are passed to the template as `tools=`; bare specs are wrapped into the OpenAI
form. A top-level `system` string becomes the first message when there is none. Fields no template reads
are dropped. Every problem raises ValueError with the reason (the reader turns it into a reject).
"""

from __future__ import annotations

import dataclasses

import orjson

CONVERSATION_FIELDS = ("conversation", "conversations", "messages")
# Every spelling of a role seen in published chat data -> the role chat templates know.
ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
    "function_call": "assistant",  # ShareGPT / LLaMA-Factory: the value is the call
}
_PLAIN_ALIASES = {k: v for k, v in ROLE_ALIASES.items() if v in ("user", "assistant") and k != "function_call"}
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
TRAIN_FIELDS = ("train", "weight", "loss_weight")
FLOAT32_MAX = 3.4028234663852886e38  # loss weights are written as float32
UNSUPPORTED_PART_TYPES = ("image", "image_url", "input_image", "audio", "audio_url", "input_audio", "video",
                          "video_url", "file", "input_file")


class TextParts(list):
    """A message's content given as several text parts (kept apart for templates that iterate parts)."""


@dataclasses.dataclass(slots=True)
class Conversation:
    """A normalised record: the messages, the tools, and per-message training flags (None: by role)."""

    messages: list[dict]
    tools: list[dict] | None = None
    train: list[bool | None] | None = None
    plain: bool = False  # only user/assistant messages with string content: nothing for a template to lack
    double_encoded: int = 0  # tool-call arguments that were JSON text of JSON text (decoded twice)
    # per message: its loss weight when not 0 or 1 (None: 1 if trained), or None when no message has one
    weights: list[float | None] | None = None

    @property
    def has_tool_calls(self) -> bool:
        return any("tool_calls" in m for m in self.messages)

    @property
    def has_reasoning(self) -> bool:
        return any("reasoning_content" in m for m in self.messages)

    def to_record(self) -> dict:
        """The normalised record as JSON-ready data (content parts joined), e.g. for a report."""
        messages = [
            {**m, "content": "".join(m["content"])} if isinstance(m["content"], TextParts) else m
            for m in self.messages
        ]
        out: dict = {"messages": messages}
        if self.tools:
            out["tools"] = self.tools
        return out


def _json_value(value, what: str):
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON ({exc})") from None
    return value


def normalize_tools(value) -> list[dict] | None:
    """Function specs as a list in the OpenAI form, or None when there are none."""
    if value is None or value == "":
        return None
    tools = _json_value(value, "'tools'")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise ValueError(f"'tools' is {type(tools).__name__}, not a list of function specs")
    out = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ValueError(f"tool {j} is {type(tool).__name__}, not an object")
        if "type" in tool:
            out.append(tool)
        elif "name" in tool:
            out.append({"type": "function", "function": tool})
        else:
            raise ValueError(f"tool {j} has neither 'type' nor 'name'")
    return out or None


class _Call(dict):
    """A normalised tool call; `double_encoded` tells that its arguments were decoded twice."""

    __slots__ = ("double_encoded",)


def _tool_call(call, where: str) -> dict:
    if not isinstance(call, dict):
        raise ValueError(f"{where} is {type(call).__name__}, not an object")
    function = call.get("function", call)
    if not isinstance(function, dict):
        raise ValueError(f"{where} 'function' is {type(function).__name__}, not an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} has no function name")
    arguments = function.get("arguments", function.get("parameters", {}))
    if arguments is None or arguments == "":
        arguments = {}
    arguments = _json_value(arguments, f"{where} arguments")
    double = False
    if isinstance(arguments, str) and arguments.lstrip().startswith("{"):
        # JSON text of JSON text ("\"{\\\"a\\\": 1}\""), as data sets made with json.dumps twice store it
        try:
            inner = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict):
            arguments, double = inner, True
    if not isinstance(arguments, dict):
        raise ValueError(f"{where} arguments are {type(arguments).__name__}, not a JSON object")
    out = _Call({"type": "function", "function": {"name": name, "arguments": arguments}})
    if call.get("id") is not None:
        out = _Call({"id": call["id"], **out})
    out.double_encoded = double
    return out


def _tool_calls(value, where: str) -> list[dict]:
    calls = _json_value(value, where)
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"{where} holds no tool call")
    return [_tool_call(call, f"{where} call {j}") for j, call in enumerate(calls)]


def _flag(message: dict, i: int) -> tuple[bool | None, float | None]:
    """A message's training flag (None: by its role) and its loss weight when other than 0 or 1."""
    flag = weight = None
    for field in TRAIN_FIELDS:
        value = message.get(field)
        if value is None:
            continue
        if field == "train":
            if not isinstance(value, bool):
                raise ValueError(f"message {i} 'train' is {value!r}, not true or false")
            this = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= FLOAT32_MAX:
                raise ValueError(f"message {i} has {field} {value!r}: a loss weight is a number >= 0 "
                                 "(0: not trained, 1: trained) that a float32 holds")
            this = value != 0
            if value not in (0, 1):
                if weight is not None and weight != value:
                    raise ValueError(f"message {i} has loss weights that disagree")
                weight = float(value)
        if flag is not None and flag != this:
            raise ValueError(f"message {i} has training flags that disagree")
        flag = this
    return flag, weight


def _content(content, i: int, message: dict, calls: list, tools_out: list) -> str | TextParts | None:
    """The text of `content`; typed parts may also carry reasoning, tool calls and tools."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"message {i} content is {type(content).__name__}, not a string or a list of parts")
    texts = TextParts()
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise ValueError(f"message {i} content part {j} is {type(part).__name__}, not an object")
        kind = part.get("type", "text")
        value = part.get("value", part.get(kind))
        if kind in ("text", "refusal"):
            value = part.get("text", part.get("value", part.get("refusal")))
            if not isinstance(value, str):
                raise ValueError(f"message {i} content part {j} ({kind}) has no text")
            texts.append(value)
        elif kind in ("reasoning", "thinking"):
            if not isinstance(value, str):
                raise ValueError(f"message {i} content part {j} (reasoning) has no text")
            message["reasoning_content"] = message.get("reasoning_content", "") + value
        elif kind == "tool_call":
            calls.extend(_tool_calls(value, f"message {i} content part {j} (tool_call)"))
        elif kind == "tools":
            tools_out.extend(normalize_tools(value) or [])
        else:  # image, audio, video, file ... : this tool prepares text-only training data
            raise ValueError(f"message {i} has a {kind!r} content part: only text parts are supported")
    if len(texts) == 1:
        return texts[0]
    return texts if texts else ""


def normalize_record(obj: object) -> Conversation:
    """The conversation of one record; raise ValueError with the reason when it cannot be used."""
    if not isinstance(obj, dict):
        raise ValueError(f"record is JSON {type(obj).__name__}, not an object")
    for field in CONVERSATION_FIELDS:
        if field in obj:
            messages = obj[field]
            break
    else:
        raise ValueError("no 'conversation', 'conversations' or 'messages' field")
    if isinstance(messages, str) and messages.lstrip().startswith("["):
        messages = _json_value(messages, f"'{field}'")
    if not isinstance(messages, list):
        raise ValueError(f"'{field}' is {type(messages).__name__}, not a list")
    if not messages:
        raise ValueError(f"'{field}' is empty")
    tools = normalize_tools(obj.get("tools")) or []
    out: list[dict] = []
    flags: list[bool | None] = []
    weights: list[float | None] = []
    system = obj.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
        flags.append(None)
        weights.append(None)
    plain = not tools and not out
    double_encoded = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is {type(message).__name__}, not an object")
        if len(message) == 2:  # the common case, {"role", "content"} or {"from", "value"}: no copy of the rules
            speaker, content = message.get("role", message.get("from")), message.get("content", message.get("value"))
            if type(content) is str and (speaker == "user" or (speaker == "assistant" and "</think>" not in content)):
                out.append({"role": speaker, "content": content})
                flags.append(None)
                weights.append(None)
                continue
            if type(content) is str and speaker in _PLAIN_ALIASES and "</think>" not in content:
                out.append({"role": _PLAIN_ALIASES[speaker], "content": content})
                flags.append(None)
                weights.append(None)
                continue
        plain = False
        if message.get("role") is not None or "content" in message:
            speaker, content = message.get("role"), message.get("content")
            if speaker is None:
                raise ValueError(f"message {i} has no 'role'")
        elif "from" in message or "value" in message:
            speaker, content = message.get("from"), message.get("value")
            if speaker is None:
                raise ValueError(f"message {i} has no 'from'")
        else:
            raise ValueError(f"message {i} has neither role/content nor from/value")
        role = ROLE_ALIASES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(f"message {i} has unknown role {speaker!r}")
        normal: dict = {"role": role}
        calls: list[dict] = []
        if speaker == "function_call":
            calls.extend(_tool_calls(content, f"message {i} (function_call)"))
            content = ""
        text = _content(content, i, normal, calls, tools)
        if role == "assistant":
            if message.get("tool_calls") is not None:
                calls.extend(_tool_calls(message["tool_calls"], f"message {i} tool_calls"))
            if message.get("function_call") is not None:
                calls.extend(_tool_calls(message["function_call"], f"message {i} function_call"))
            for field in REASONING_FIELDS:
                value = message.get(field)
                if value is not None:
                    if not isinstance(value, str):
                        raise ValueError(f"message {i} {field} is {type(value).__name__}, not a string")
                    normal["reasoning_content"] = value
                    break
            if not normal.get("reasoning_content", "").strip("\n"):
                normal.pop("reasoning_content", None)
            if text is None:
                if not calls:
                    raise ValueError(f"message {i} has no content and no tool calls")
                text = ""
            if calls:
                normal["tool_calls"] = calls
                double_encoded += sum(getattr(c, "double_encoded", False) for c in calls)
        elif calls:
            raise ValueError(f"message {i} ({role}) carries tool calls; only assistant messages can")
        else:
            normal.pop("reasoning_content", None)  # reasoning of a non-assistant turn: no template reads it
        if text is None:
            raise ValueError(f"message {i} has no content")
        normal["content"] = text
        if role == "tool":
            for field in ("tool_call_id", "name"):
                if isinstance(message.get(field), str):
                    normal[field] = message[field]
        if role == "system" and i == 0 and system:
            out[0] = normal  # the record's own system message wins
            flags[0], weights[0] = _flag(message, i)
            continue
        out.append(normal)
        flag, weight = _flag(message, i)
        flags.append(flag)
        weights.append(weight)
    return Conversation(out, tools or None, flags if any(f is not None for f in flags) else None, plain,
                        double_encoded, weights if any(w is not None for w in weights) else None)
