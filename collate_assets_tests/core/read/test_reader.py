"""Reading JSONL conversations: accepted shapes, rejects with reasons, chunking and line accounting."""

from __future__ import annotations

import gc
import gzip
import json
import warnings

import orjson
import pytest

from collate_assets.core import CollateError, CollateSettings, iter_chunks, normalize_conversation, tokenize_file
from collate_assets.core.read.formats import ROLE_ALIASES
from collate_assets.core.read.reader import input_stem, list_input_files

ROLE_CONTENT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
SHAREGPT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]


def _line(obj) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _all(path, **kwargs):
    """Every chunk of a file merged into (line numbers, conversations, rejects, lines, blanks, bytes)."""
    chunks = list(iter_chunks(path, **kwargs))
    return (
        [n for c in chunks for n in c.line_numbers],
        [m.messages for c in chunks for m in c.conversations],
        [r for c in chunks for r in c.rejects],
        sum(c.lines_read for c in chunks),
        sum(c.blank_lines for c in chunks),
        sum(c.bytes_read for c in chunks),
    )


# -- normalize_conversation --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["conversation", "conversations", "messages"])
@pytest.mark.parametrize("messages", [ROLE_CONTENT, SHAREGPT], ids=["role-content", "sharegpt"])
def test_every_field_and_message_style(field, messages):
    assert normalize_conversation({field: messages, "id": 7, "label": True}).messages == ROLE_CONTENT


@pytest.mark.parametrize(
    ("speaker", "role"),
    [("human", "user"), ("user", "user"), ("gpt", "assistant"), ("chatgpt", "assistant"), ("bing", "assistant"),
     ("bard", "assistant"), ("assistant", "assistant"), ("system", "system"), ("tool", "tool"),
     ("function", "tool"), ("observation", "tool")],
)
def test_sharegpt_role_mapping(speaker, role):
    assert ROLE_ALIASES[speaker] == role
    assert normalize_conversation({"conversations": [{"from": speaker, "value": "x"}]}).messages == [
        {"role": role, "content": "x"}
    ]


def test_role_content_keeps_system_and_tool_and_empty_content():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "ok", "extra": 1},
        {"role": "tool", "content": "{}"},
    ]
    assert normalize_conversation({"messages": messages}).messages == [
        {k: m[k] for k in ("role", "content")} for m in messages
    ]


def test_first_field_wins_in_documented_order():
    obj = {"messages": [{"role": "user", "content": "from messages"}], "conversation": ROLE_CONTENT}
    assert normalize_conversation(obj).messages == ROLE_CONTENT


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([ROLE_CONTENT], "record is JSON list, not an object"),
        ("text", "record is JSON str, not an object"),
        (3, "record is JSON int, not an object"),
        (None, "record is JSON NoneType, not an object"),
        ({"dialog": ROLE_CONTENT}, "no 'conversation', 'conversations' or 'messages' field"),
        ({"messages": "Hi"}, "'messages' is str, not a list"),
        ({"conversations": {"0": SHAREGPT[0]}}, "'conversations' is dict, not a list"),
        ({"conversation": []}, "'conversation' is empty"),
        ({"messages": ["Hi"]}, "message 0 is str, not an object"),
        ({"messages": [{"content": "Hi"}]}, "message 0 has no 'role'"),
        ({"messages": [{"role": "user"}]}, "message 0 has no content"),
        ({"messages": [{"role": "user", "content": None}]}, "message 0 has no content"),
        ({"messages": [ROLE_CONTENT[0], {"role": "narrator", "content": "x"}]}, "message 1 has unknown role 'narrator'"),
        ({"messages": [{"role": 1, "content": "x"}]}, "message 0 has unknown role 1"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "message 0 has a 'image_url' content part: only text parts are supported"),
        ({"messages": [{"role": "user", "content": 42}]}, "message 0 content is int, not a string or a list of parts"),
        ({"conversations": [{"value": "Hi"}]}, "message 0 has no 'from'"),
        ({"conversations": [{"from": "human"}]}, "message 0 has no content"),
        ({"conversations": [SHAREGPT[0], {"from": "alien", "value": "x"}]}, "message 1 has unknown role 'alien'"),
        ({"conversations": [{"from": "human", "value": 3.5}]},
         "message 0 content is float, not a string or a list of parts"),
        ({"messages": [{"speaker": "user", "text": "Hi"}]}, "message 0 has neither role/content nor from/value"),
    ],
)
def test_rejects_with_reason(obj, reason):
    with pytest.raises(ValueError) as info:
        normalize_conversation(obj)
    assert str(info.value) == reason


# -- iter_chunks ---------------------------------------------------------------------------------------


def test_lines_blank_and_rejects_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        _line({"messages": ROLE_CONTENT})  # 1
        + b"\n"  # 2 blank
        + b'{"messages": [\n'  # 3 broken JSON
        + b"   \t \n"  # 4 blank (whitespace only)
        + _line([1, 2])  # 5 not an object
        + _line({"conversations": SHAREGPT})  # 6
        + _line({"text": "hello"})  # 7 missing field
        + b'{"messages": "\xff\xfe"}\n'  # 8 invalid UTF-8
        + _line({"messages": []})  # 9 empty
        + orjson.dumps({"conversation": ROLE_CONTENT})  # 10, no final newline
    )
    numbers, conversations, rejects, lines, blanks, size = _all(path)
    assert numbers == [1, 6, 10]
    assert conversations == [ROLE_CONTENT] * 3
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (3, "invalid JSON"),
        (5, "record is JSON list, not an object"),
        (7, "no 'conversation', 'conversations' or 'messages' field"),
        (8, "invalid UTF-8"),
        (9, "'messages' is empty"),
    ]
    assert all(r.file == str(path) for r in rejects)
    assert rejects[1].excerpt == "[1,2]\n"
    assert (lines, blanks, size) == (10, 2, path.stat().st_size)
    assert lines == blanks + len(conversations) + len(rejects)


def test_excerpt_is_bounded(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * 100_000 + b'"}\n')
    (_, _, [reject], _, _, _) = _all(path)
    assert len(reject.excerpt) == 200 and reject.excerpt.startswith('{"text": "xxx')


def test_bom_and_crlf_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps({"messages": ROLE_CONTENT}), "", json.dumps({"conversations": SHAREGPT})]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    numbers, conversations, rejects, lines_read, blanks, _ = _all(path)
    assert (numbers, rejects, lines_read, blanks) == ([1, 3], [], 3, 1)
    assert conversations == [ROLE_CONTENT, ROLE_CONTENT]


def test_bom_only_accepted_at_file_start(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(_line({"messages": ROLE_CONTENT}) + b"\xef\xbb\xbf" + _line({"messages": ROLE_CONTENT}))
    numbers, _, rejects, _, _, _ = _all(path)
    # Rejected: orjson refuses a BOM inside the file (only the first line may carry one).
    assert numbers == [1] and [r.line for r in rejects] == [2]


def test_gzip_reads_like_plain(tmp_path):
    body = b"".join(_line({"messages": ROLE_CONTENT}) for _ in range(5)) + b"\n" + b"not json\n"
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    got_plain, got_gzip = _all(plain, chunk_lines=2), _all(packed, chunk_lines=2)
    assert got_gzip[:2] == got_plain[:2] and got_gzip[3:5] == got_plain[3:5]
    assert [(r.file, r.line, r.reason) for r in got_gzip[2]] == [(str(packed), 7, got_plain[2][0].reason)]
    assert got_gzip[5] == len(body)  # bytes counted uncompressed
    assert got_gzip[0] == [1, 2, 3, 4, 5] and got_gzip[4] == 1 and got_gzip[2][0].line == 7


def test_corrupt_gzip_is_collate_error(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(_line({"messages": ROLE_CONTENT}) * 1000)[:-40])
    with pytest.raises(CollateError, match="bad.jsonl.gz: cannot read after line"):
        list(iter_chunks(path))


@pytest.mark.parametrize("name", ["absent.jsonl", "absent.jsonl.gz"])
def test_missing_file_is_collate_error(tmp_path, name):
    with pytest.raises(CollateError, match=f"{name}: cannot open"):
        list(iter_chunks(tmp_path / name))


def test_gzip_input_file_is_closed(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(_line({"messages": ROLE_CONTENT})))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(iter_chunks(path))) == 1
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("chunk_lines", [1, 3, 4, 1000])
def test_chunks_close_at_chunk_lines(tmp_path, chunk_lines):
    path = tmp_path / "ten.jsonl"
    path.write_bytes(b"".join(_line({"messages": ROLE_CONTENT}) for _ in range(10)))
    chunks = list(iter_chunks(path, chunk_lines=chunk_lines))
    sizes = [c.lines_read for c in chunks]
    assert sum(sizes) == 10 and all(s == chunk_lines for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_lines
    assert [n for c in chunks for n in c.line_numbers] == list(range(1, 11))


def test_chunks_close_at_chunk_bytes(tmp_path):
    line = _line({"messages": ROLE_CONTENT})
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(line * 10)
    chunks = list(iter_chunks(path, chunk_lines=1000, chunk_bytes=2 * len(line)))
    assert [c.lines_read for c in chunks] == [2] * 5
    assert [c.bytes_read for c in chunks] == [2 * len(line)] * 5


def test_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert list(iter_chunks(path)) == []


def test_input_listing(tmp_path):
    for name in ("b.jsonl", "a.jsonl.gz", "notes.txt", "c.json", "d.parquet", "e.jsonl.zst", "f.csv", "g.json.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jsonl").mkdir()
    assert [p.name for p in list_input_files(tmp_path)] == ["a.jsonl.gz", "b.jsonl", "c.json", "d.parquet", "e.jsonl.zst"]
    assert list_input_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert [input_stem(p) for p in list_input_files(tmp_path)] == ["a", "b", "c", "d", "e"]
    with pytest.raises(CollateError, match="input not found"):
        list_input_files(tmp_path / "nowhere")
    with pytest.raises(CollateError, match="no input files \\(\\*.jsonl, \\*.jsonl.gz, \\*.jsonl.zst, \\*.json, \\*.parquet\\)"):
        list_input_files(tmp_path / "sub.jsonl")


# -- through tokenize_file: every line accounted for -------------------------------------------------


def test_tokenize_file_accounts_for_every_line(tmp_path, load_shared_tokenizer):
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    path = tmp_path / "in.jsonl.gz"
    body = (
        _line({"messages": ROLE_CONTENT})  # 1
        + b"\n"  # 2 blank
        + b"{broken\n"  # 3
        + _line({"conversations": SHAREGPT})  # 4
        + _line({"messages": [{"role": "wizard", "content": "x"}]})  # 5
        + b"\r\n"  # 6 blank
        + _line({"messages": [{"role": "user", "content": "only a question"}]})  # 7 no assistant turn
        + _line({"messages": [{"role": "user", "content": 1}]})  # 8
    )
    path.write_bytes(gzip.compress(body))
    rejects_path = tmp_path / "in.rejects.jsonl"
    stats = tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(labels="assistant"),
                          rejects_path=rejects_path, chunk_lines=3)
    # Reader rejects of a chunk are logged before its template/label rejects: sort by line.
    rejects = sorted((json.loads(line) for line in rejects_path.read_text().splitlines()), key=lambda r: r["line"])
    assert [(r["file"], r["line"]) for r in rejects] == [(str(path), n) for n in (3, 5, 7, 8)]
    assert rejects[0]["reason"].startswith("invalid JSON")
    assert rejects[1]["reason"] == "message 0 has unknown role 'wizard'"
    assert rejects[2]["reason"].startswith("no trainable token")
    assert rejects[3]["reason"] == "message 0 content is int, not a string or a list of parts"
    assert all(r["excerpt"] for r in rejects)
    assert (stats.lines_read, stats.blank_lines, stats.conversations, stats.rejected) == (8, 2, 2, 4)
    assert stats.lines_read == stats.blank_lines + stats.conversations + stats.rejected
    assert stats.accounted()
    assert sum(stats.reject_reasons.values()) == 4


def test_strict_mode_fails_on_first_reject(tmp_path, load_shared_tokenizer):
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    path = tmp_path / "in.jsonl"
    path.write_bytes(_line({"messages": ROLE_CONTENT}) + b"{broken\n")
    spill, rejects = tmp_path / "spill.arrow", tmp_path / "rejects.jsonl"
    with pytest.raises(CollateError, match=r"in.jsonl:2: invalid JSON.*\(strict mode\)"):
        tokenize_file(path, spill, tokenizer, CollateSettings(strict=True), rejects_path=rejects)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no partial spill or rejects file
