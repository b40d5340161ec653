"""The probe texts and conversations the engine tries a tokenizer and its chat template on.

- `PIPELINE_PROBES` / `pipeline_probes`: texts that tell two tokenizer pipelines apart (whitespace runs,
  digits, Unicode that normalisation changes, each added token in context): the drift check
  (tokenizer.py) and the fast encoder's probe at load (encoder.py);
- `probe_record`: a short conversation using every feature the template shows (system, tools,
  reasoning): what `ChatEncoder` masks when it loads (chat.py) and what `--check-template` shows
  (report.py).
"""

from __future__ import annotations

# Ordinary text every tokenizer for chat data must encode: letters, digits, punctuation, accents.
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789, naïve café! Hello world?"
PIPELINE_PROBES = (
    "\n\n1. First\n2. Second", "Hello world", " Hello", "  two spaces", "a  b   c\t\td", "\n\n\n\nend",
    "line\r\nnext", "trailing   \n", "12345 67890 3.14159 1,000,000 2024-12-31", "x1y22z333",
    "café cafe\u0301 Å \u212b ﬁ Ｆｕｌｌ ① ½", "naïve 你好，世界 안녕하세요 👩‍💻", PROBE_TEXT,
)
MAX_PROBED_TOKENS = 1000  # added tokens tried in context (Llama-3 has 256, gpt-oss a few dozen)

PROBE_CALL_ID = "probe0001"  # nine alphanumerics: Mistral's templates raise on any other form
PROBE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def pipeline_probes(tokenizer) -> list[str]:
    """PIPELINE_PROBES, and each added token (special or not) in context: before a newline and a word,
    between words, after a word."""
    backend = tokenizer.backend_tokenizer
    texts = list(PIPELINE_PROBES)
    added = sorted(backend.get_added_tokens_decoder().items())[:MAX_PROBED_TOKENS]
    for _, token in added:
        t = token.content
        texts += [f"{t}\nHello 12 world", f"Hi {t} there\n\n1.", f"end.{t}"]
    return texts


def probe_record(encoder) -> dict:
    """A short conversation using every feature the template shows (system, tools, reasoning), from what
    `encoder.info` (a ChatEncoder's TemplateInfo) says the template shows."""
    info = encoder.info
    messages = [{"role": "user", "content": "Hello, who are you?"},
                {"role": "assistant", "content": "I am a helpful assistant."}]
    if info.system:
        messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    record: dict = {"messages": messages}
    messages.append({"role": "user", "content": "What is the weather in Paris?"})
    if info.tools is not False and info.tool_calls is not False and info.tool_results is not False:
        record["tools"] = PROBE_TOOLS
        call = {"id": PROBE_CALL_ID, "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        calling = {"role": "assistant", "content": None, "tool_calls": [call]}
        if info.reasoning_key and info.reasoning_shown == "tool-call turns":
            calling["reasoning_content"] = "The user asks for the weather; call the tool."
        messages += [calling, {"role": "tool", "tool_call_id": PROBE_CALL_ID, "content": "{\"temperature_c\": 21}"}]
    elif info.needs_tools:
        record["tools"] = PROBE_TOOLS
    answer = {"role": "assistant", "content": "It is 21 °C in Paris."}
    if info.reasoning_key and info.reasoning_shown == "every turn":
        answer["reasoning_content"] = "The user asks for the weather; answer briefly."
    messages.append(answer)
    return record
