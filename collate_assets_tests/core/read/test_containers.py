"""Input containers: .jsonl(.gz|.zst), streamed .json arrays and .parquet give the same conversations.

Every file here is written by the test into tmp_path (pyarrow writes the Parquet files, zstandard
compresses); the shared JSON arrays in ../shared/data are read where they lie.
"""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from collate_assets.core import CollateError, CollateSettings, collate_file, iter_chunks, normalize_conversation, tokenize_file
from collate_assets.core.read import containers
from collate_assets.core.read.reader import INPUT_SUFFIXES, Reject, input_stem, list_input_files, position_unit, progress_total
from collate_assets.sample import DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import SHARED_DIR, load_shared_tokenizer

ROLE_CONTENT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
SHAREGPT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
SHARED_JSON = {
    "fastchat": SHARED_DIR / "data/fastchat_dummy_conversation/dummy_conversation.json",
    "kto": SHARED_DIR / "data/llamafactory_kto_en_demo/kto_en_demo.json",
    "glaive": SHARED_DIR / "data/llamafactory_glaive_toolcall_zh/glaive_toolcall_zh_demo.json",
}


def _shared(key: str) -> Path:
    path = SHARED_JSON[key]
    if not path.exists():
        pytest.skip(f"{path} not found (the shared folder is expected beside the checkout)")
    return path


def _all(path, **kwargs):
    """Every chunk of a file merged: (positions, conversations, rejects, records read, blank, bytes)."""
    chunks = list(iter_chunks(path, **kwargs))
    return (
        [n for c in chunks for n in c.line_numbers],
        [m for c in chunks for m in c.conversations],
        [r for c in chunks for r in c.rejects],
        sum(c.lines_read for c in chunks),
        sum(c.blank_lines for c in chunks),
        sum(c.bytes_read for c in chunks),
    )


def _records(path: Path) -> list:
    return json.loads(path.read_text(encoding="utf-8"))


def _expected(records: list) -> tuple[list[int], list, list[int]]:
    """What the reader must make of records at positions 0..n-1: (good positions, conversations, bad positions)."""
    good, conversations, bad = [], [], []
    for i, record in enumerate(records):
        try:
            conversations.append(normalize_conversation(record))
            good.append(i)
        except ValueError:
            bad.append(i)
    return good, conversations, bad


# -- writers of every container ------------------------------------------------------------------------


def write_jsonl(path: Path, records: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def write_gz(path: Path, records: list) -> Path:
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))
    return path


def write_zst(path: Path, records: list, frames: int = 1) -> Path:
    """A .jsonl.zst written by zstandard's streaming writer, in `frames` frames (as `zstd` of concatenated parts)."""
    body = b"".join(orjson.dumps(r) + b"\n" for r in records)
    out = io.BytesIO()
    step = -(-len(body) // frames)
    for start in range(0, len(body), step):
        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            writer.write(body[start : start + step])
    path.write_bytes(out.getvalue())
    return path


def write_json(path: Path, records: list, indent: bool = True) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2 if indent else None), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list, row_group_size: int = 64) -> Path:
    """One column per key of any record (null where a record lacks it); types inferred over all rows."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    table = pa.table({k: pa.array([r.get(k) for r in records]) for k in keys})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


WRITERS = {
    ".jsonl": write_jsonl,
    ".jsonl.gz": write_gz,
    ".jsonl.zst": write_zst,
    ".json": write_json,
    ".parquet": write_parquet,
}


def mixed_records() -> list[dict]:
    """Real conversations in both styles, with extra fields of several types (as Parquet columns would be)."""
    fastchat = _records(_shared("fastchat"))[:60]
    kto = _records(_shared("kto"))[:60]
    out = []
    for i, (a, b) in enumerate(zip(fastchat, kto)):
        out.append({"id": a["id"], "conversations": a["conversations"], "score": i / 7})
        out.append({"messages": b["messages"], "label": b["label"], "tools": json.dumps([{"name": f"f{i}"}])})
    return out


# -- the same records in every container ----------------------------------------------------------------


def test_every_suffix_is_an_input_and_names_the_same_stem(tmp_path):
    assert set(INPUT_SUFFIXES) == set(WRITERS)
    for suffix in WRITERS:
        (tmp_path / f"x{suffix}").write_bytes(b"")
        assert input_stem(tmp_path / f"x{suffix}") == "x"
    (tmp_path / "x.json.gz").write_bytes(b"")
    (tmp_path / "x.csv").write_bytes(b"")
    assert sorted(p.name for p in list_input_files(tmp_path)) == sorted(f"x{s}" for s in WRITERS)


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_reader_gives_the_same_conversations_in_every_container(tmp_path, suffix):
    records = mixed_records() + [{"messages": []}, {"text": "no conversation"}]
    good, conversations, bad = _expected(records)
    path = WRITERS[suffix](tmp_path / f"in{suffix}", records)
    positions, got, rejects, read, blank, _ = _all(path, chunk_lines=16)
    assert got == conversations
    offset = 1 if suffix.startswith(".jsonl") else 0  # lines count from 1, indices and rows from 0
    unit = {".json": "index", ".parquet": "row"}.get(suffix, "line")
    assert positions == [i + offset for i in good]
    assert [(r.line, r.unit) for r in rejects] == [(i + offset, unit) for i in bad]
    assert read == len(records) and blank == 0


@pytest.mark.parametrize("fmt", ["arrow", "jsonl"])
def test_same_conversations_give_byte_identical_outputs_in_every_container(tmp_path, fmt):
    tokenizer = load_shared_tokenizer("Qwen3")  # half the records carry tools: a template that shows them
    records = mixed_records()
    settings = CollateSettings(max_length=2048)
    outputs = {}
    for suffix, write in WRITERS.items():
        folder = tmp_path / suffix.strip(".").replace(".", "_")
        folder.mkdir()
        source = write(folder / f"in{suffix}", records)
        stats = collate_file(source, folder / f"out.{fmt}", tokenizer, settings, fmt)
        assert (stats.tokenize.conversations, stats.tokenize.rejected) == (len(records), 0)
        outputs[suffix] = (folder / f"out.{fmt}").read_bytes()
    reference = outputs[".jsonl"]
    assert len(reference) > 10_000
    assert {suffix: data == reference for suffix, data in outputs.items()} == dict.fromkeys(WRITERS, True)


# -- .json: the shared arrays, streamed ---------------------------------------------------------------------


@pytest.mark.parametrize(("key", "count", "usable"), [("fastchat", 500, 500), ("kto", 300, 300), ("glaive", 300, None)])
def test_shared_json_arrays_read_as_records(key, count, usable):
    path = _shared(key)
    records = _records(path)
    assert len(records) == count
    good, conversations, bad = _expected(records)
    if usable is not None:
        assert len(good) == usable
    positions, got, rejects, read, blank, nbytes = _all(path, chunk_lines=100)
    assert positions == good and got == conversations
    assert [r.line for r in rejects] == bad and all(r.unit == "index" for r in rejects)
    assert read == count == len(positions) + len(rejects) and blank == 0
    assert nbytes == path.stat().st_size == progress_total(path)
    assert position_unit(path) == "index"


def test_json_excerpts_are_the_record_as_compact_json(tmp_path):
    records = _records(_shared("kto"))[:5]
    path = write_json(tmp_path / "kto.json", records)
    chunk = next(iter_chunks(path))
    assert chunk.excerpts == [orjson.dumps(r).decode()[:200] for r in records]


def test_json_chunks_close_at_chunk_lines_and_bytes(tmp_path):
    path = write_json(tmp_path / "ten.json", [{"messages": ROLE_CONTENT}] * 10)
    assert [c.lines_read for c in iter_chunks(path, chunk_lines=4)] == [4, 4, 2]
    size = len(orjson.dumps({"messages": ROLE_CONTENT}))
    assert [c.lines_read for c in iter_chunks(path, chunk_bytes=3 * size)] == [3, 3, 3, 1]


def test_json_numbers_read_as_orjson_reads_them(tmp_path):
    """Floats are floats (not ijson's Decimal), and an integer beyond 64 bits (where yajl's C parser stops)
    neither breaks the array nor reads differently from the same record as a JSONL line."""
    records = [{"messages": ROLE_CONTENT, "score": 0.1, "i": i} for i in range(5)]
    records[3]["n"] = 10**30
    records[4]["m"] = -(2**63)
    path = write_json(tmp_path / "f.json", records)
    units = list(containers.open_units(path, 1 << 20)[1])
    got = [payload.record for _, payload, _, _ in units]
    assert got == orjson.loads(path.read_bytes())
    assert type(got[0]["score"]) is float and type(got[3]["n"]) is float and type(got[4]["m"]) is int
    assert [u[0] for u in units] == [0, 1, 2, 3, 4] and sum(u[2] for u in units) == path.stat().st_size
    assert [u[3] for u in units] == [len(orjson.dumps(r)) for r in got]


def test_json_with_bom_and_blank_or_empty_file(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf \n" + json.dumps([{"messages": ROLE_CONTENT}]).encode())
    assert _all(path)[:4] == ([0], [normalize_conversation({"messages": ROLE_CONTENT})], [], 1)
    for body in (b"", b" \n\t\n"):
        (tmp_path / "empty.json").write_bytes(body)
        assert list(iter_chunks(tmp_path / "empty.json")) == []


def test_json_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_bytes(b"\n" + orjson.dumps({"messages": ROLE_CONTENT}) + b"\n\n{broken\n"
                     + orjson.dumps({"conversations": SHAREGPT}) + b"\n")
    positions, got, rejects, read, blank, nbytes = _all(path)
    assert positions == [2, 5] and len(got) == 2
    assert [(r.line, r.unit, r.reason.split(":")[0]) for r in rejects] == [(4, "line", "invalid JSON")]
    assert (read, blank, nbytes) == (5, 2, path.stat().st_size)
    assert position_unit(path) == "line"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (json.dumps({"messages": ROLE_CONTENT}, indent=2), "one JSON object over several lines"),
        ('"just a string"', "'\"'"),
        ("42", "'4'"),
        ("<html></html>", "'<'"),
    ],
)
def test_json_that_is_not_an_array_fails_with_one_message(tmp_path, body, what):
    path = tmp_path / "not_array.json"
    path.write_text(body)
    with pytest.raises(CollateError) as info:
        list(iter_chunks(path))
    message = str(info.value)
    assert message.startswith(f"{path}: not a JSON array of records: the file starts with {what}")
    assert "JSON Lines" in message


def test_broken_json_array_keeps_the_records_before_the_break_and_reports_it(tmp_path):
    records = [{"messages": ROLE_CONTENT, "i": i} for i in range(6)]
    text = json.dumps(records, indent=1)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"i": 4')])  # cut inside record 4
    positions, got, rejects, read, _, _ = _all(path, chunk_lines=2)
    assert positions == [0, 1, 2, 3] and len(got) == 4
    [reject] = rejects
    assert (reject.line, reject.unit) == (4, "index") and reject.reason.startswith("broken JSON array here:")
    assert "nothing after it was read" in reject.reason
    assert read == len(positions) + len(rejects)

    # invalid JSON in the middle, and content after the closing bracket
    (tmp_path / "mid.json").write_text('[{"messages": []}, {"messages": [}, {"messages": []}]')
    _, _, rejects, read, _, _ = _all(tmp_path / "mid.json")
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(0, "'messages' is empty"), (1, "broken JSON array here")]
    assert read == 2
    (tmp_path / "tail.json").write_text(json.dumps(records[:2]) + "\n[]")
    positions, _, rejects, read, _, _ = _all(tmp_path / "tail.json")
    assert positions == [0, 1] and [r.line for r in rejects] == [2] and read == 3
    assert rejects[0].reason.startswith("broken JSON array after the end of the array")


def test_broken_json_array_counts_through_tokenize_file(tmp_path):
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    text = json.dumps(_records(_shared("kto"))[:20])
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) * 2 // 3])
    rejects_path = tmp_path / "cut.rejects.jsonl"
    stats = tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(), rejects_path=rejects_path)
    assert stats.rejected == 1 and stats.conversations >= 10
    assert stats.lines_read == stats.conversations + stats.rejected + stats.blank_lines
    [reject] = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert set(reject) == {"file", "index", "reason", "excerpt"} and reject["index"] == stats.conversations


def test_json_record_over_max_line_bytes_is_rejected_by_its_json_size(tmp_path):
    records = [{"messages": ROLE_CONTENT, "pad": "x" * n} for n in (10, 5000, 20)]
    path = write_json(tmp_path / "long.json", records)
    limit = len(orjson.dumps(records[0])) + 100
    positions, _, rejects, read, _, _ = _all(path, max_line_bytes=limit)
    assert positions == [0, 2] and [r.line for r in rejects] == [1] and read == 3
    size = len(orjson.dumps(records[1]))
    assert rejects[0].reason == f"record longer than {limit} bytes as JSON ({size} bytes); not used"
    assert rejects[0].excerpt.startswith('{"messages":[{"role":"user","content":"Hi"}')
    # exactly at the limit is kept
    assert _all(path, max_line_bytes=size)[0] == [0, 1, 2]


def test_json_record_over_max_line_bytes_is_never_built_whole(tmp_path):
    """A 24 MB record under a 1 MiB limit: the reader stops building it, so memory stays far below its size."""
    message = {"role": "user", "content": "y" * 10_000}
    huge = {"messages": [message] * 2400}
    path = tmp_path / "huge.json"
    path.write_bytes(b"[" + orjson.dumps({"messages": ROLE_CONTENT}) + b"," + orjson.dumps(huge) + b","
                     + orjson.dumps({"messages": ROLE_CONTENT}) + b"]")
    assert path.stat().st_size > 24_000_000
    tracemalloc.start()
    try:
        positions, _, rejects, read, _, _ = _all(path, max_line_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert positions == [0, 2] and [r.line for r in rejects] == [1] and read == 3
    assert f"({len(orjson.dumps(huge))} bytes)" in rejects[0].reason
    assert peak < 8_000_000, f"peak {peak:,} bytes of Python allocations"


# -- .jsonl.zst -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 3])
def test_zstd_reads_like_plain_and_counts_compressed_bytes(tmp_path, frames):
    records = [{"messages": ROLE_CONTENT, "i": i} for i in range(3000)] + [{"bad": 1}]
    plain = write_jsonl(tmp_path / "a.jsonl", records)
    packed = write_zst(tmp_path / "a.jsonl.zst", records, frames=frames)
    got_plain, got_zst = _all(plain, chunk_lines=100), _all(packed, chunk_lines=100)
    assert got_zst[:2] == got_plain[:2] and got_zst[3:5] == got_plain[3:5]
    assert [(r.line, r.reason) for r in got_zst[2]] == [(r.line, r.reason) for r in got_plain[2]] == [(3001, got_plain[2][0].reason)]
    assert got_zst[5] == packed.stat().st_size == progress_total(packed) < plain.stat().st_size


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "ended before the end of a frame"),
        (lambda data: b"this is not zstd at all\n" * 40, "zstd"),
        (lambda data: data[:30] + bytes(len(data) - 60) + data[-30:], "zstd"),
    ],
    ids=["truncated", "not-zstd", "corrupt"],
)
def test_corrupt_zstd_fails_the_file(tmp_path, damage, message):
    path = write_zst(tmp_path / "bad.jsonl.zst", [{"messages": ROLE_CONTENT, "i": i} for i in range(2000)])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CollateError, match=rf"bad.jsonl.zst: cannot read after line \d+: .*{message}"):
        list(iter_chunks(path))


def test_highly_compressed_zstd_is_decoded_in_bounded_memory(tmp_path):
    """32 MB of one repeated line compress to a few KB: decoding must not expand them in one piece."""
    line = orjson.dumps({"messages": [{"role": "user", "content": "r" * 400}, ROLE_CONTENT[1]]}) + b"\n"
    count = (32 << 20) // len(line)
    path = tmp_path / "repeats.jsonl.zst"
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=19).stream_writer(out, closefd=False) as writer:
        for _ in range(count // 1000):
            writer.write(line * 1000)
    path.write_bytes(out.getvalue())
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        read = sum(c.lines_read for c in iter_chunks(path, chunk_lines=256))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == count // 1000 * 1000
    assert peak < 16_000_000, f"peak {peak:,} bytes of Python allocations"


def test_zstd_line_over_max_line_bytes_rejected(tmp_path):
    records = [{"messages": ROLE_CONTENT}, {"messages": ROLE_CONTENT, "pad": "z" * 50_000}, {"messages": ROLE_CONTENT}]
    path = write_zst(tmp_path / "long.jsonl.zst", records)
    positions, _, rejects, _, _, _ = _all(path, max_line_bytes=1000)
    assert positions == [1, 3] and [r.line for r in rejects] == [2]
    assert rejects[0].reason.startswith("line longer than 1000 bytes")


# -- .parquet ------------------------------------------------------------------------------------------------------


def test_parquet_rows_pass_columns_through_and_drop_null_struct_fields(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "Hi", "name": "ann"}, {"role": "assistant", "content": "Hello!"}],
         "id": 1, "tools": json.dumps([{"name": "f"}])},
        {"conversations": SHAREGPT, "id": 2, "tools": None},
    ]
    path = write_parquet(tmp_path / "p.parquet", records)
    schema = pq.read_schema(path)
    assert pa.types.is_list(schema.field("messages").type) and pa.types.is_string(schema.field("tools").type)
    got = [payload.record for _, payload, _, _ in containers.open_units(path, 1 << 20)[1]]
    # null struct fields ("name" in the second message) and null columns read like absent keys
    assert got == [records[0], {"conversations": SHAREGPT, "id": 2}]
    positions, conversations, rejects, _, _, nbytes = _all(path)
    assert positions == [0, 1] and conversations == [normalize_conversation(r) for r in got] and rejects == []
    assert nbytes == path.stat().st_size


def test_parquet_tools_as_a_list_of_structs(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "description": "d"}}, {"type": "function", "function": {"name": "g"}}]
    path = write_parquet(tmp_path / "t.parquet", [{"messages": ROLE_CONTENT, "tools": tools}])
    [(_, payload, _, _)] = list(containers.open_units(path, 1 << 20)[1])
    assert payload.record["tools"] == tools  # g's missing description stays missing


def test_parquet_rejects_are_rows_from_zero_across_row_groups(tmp_path):
    records = [{"messages": ROLE_CONTENT if i % 50 else [], "i": i} for i in range(1000)]
    path = write_parquet(tmp_path / "rows.parquet", records, row_group_size=300)
    assert pq.ParquetFile(path).num_row_groups == 4
    positions, _, rejects, read, _, nbytes = _all(path, chunk_lines=128)
    assert [r.line for r in rejects] == list(range(0, 1000, 50)) and all(r.unit == "row" for r in rejects)
    assert positions == [i for i in range(1000) if i % 50] and read == 1000
    assert nbytes == path.stat().st_size == progress_total(path)
    assert rejects[1].to_dict() == {"file": str(path), "row": 50, "reason": "'messages' is empty",
                                    "excerpt": '{"messages":[],"i":50}'}


def test_parquet_row_over_max_line_bytes_is_rejected(tmp_path):
    records = [{"messages": ROLE_CONTENT, "pad": "p" * n} for n in (1, 9000, 2)]
    path = write_parquet(tmp_path / "long.parquet", records)
    positions, _, rejects, _, _, _ = _all(path, max_line_bytes=2000)
    assert positions == [0, 2] and [r.line for r in rejects] == [1]
    assert rejects[0].reason == f"row longer than 2000 bytes as JSON ({len(orjson.dumps(records[1]))} bytes); not used"


def test_parquet_without_conversation_column_names_its_columns(tmp_path):
    path = write_parquet(tmp_path / "nocol.parquet", [{"prompt": "a", "response": "b"}])
    with pytest.raises(CollateError, match=r"nocol.parquet: no conversation column .*its columns are: 'prompt', 'response'$"):
        list(iter_chunks(path))


@pytest.mark.parametrize("damage", [lambda d: d[: len(d) // 2], lambda d: b"PAR1" + bytes(200) + b"PAR1", lambda d: b""],
                         ids=["truncated", "garbage", "empty"])
def test_corrupt_parquet_fails_the_file(tmp_path, damage):
    path = write_parquet(tmp_path / "bad.parquet", [{"messages": ROLE_CONTENT}] * 100)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CollateError, match=r"bad.parquet: cannot open: not a readable Parquet file"):
        list(iter_chunks(path))


# -- positions in the rejects file and in messages ------------------------------------------------------------------


def test_reject_to_dict_names_the_unit():
    assert Reject("f", 3, "r", "e").to_dict() == {"file": "f", "line": 3, "reason": "r", "excerpt": "e"}
    assert Reject("f", 0, "r", "e", "index").to_dict() == {"file": "f", "index": 0, "reason": "r", "excerpt": "e"}
    assert Reject("f", 7, "r", "e", "row").where == "f row 7"
    assert Reject("f", 7, "r", "e").where == "f:7"


@pytest.mark.parametrize(("suffix", "key"), [(".json", "index"), (".parquet", "row"), (".jsonl.zst", "line")])
def test_rejects_file_positions_including_the_engines_rejects(tmp_path, suffix, key):
    """Reader rejects and the engine's (no assistant turn under labels=assistant) carry the file's unit."""
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    records = [
        {"messages": ROLE_CONTENT},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": ROLE_CONTENT},
    ]
    path = WRITERS[suffix](tmp_path / f"in{suffix}", records)
    rejects_path = tmp_path / "rejects.jsonl"
    stats = tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(labels="assistant"),
                          rejects_path=rejects_path)
    rejects = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    offset = 1 if key == "line" else 0
    assert [(set(r), r[key]) for r in rejects] == [({"file", key, "reason", "excerpt"}, i + offset) for i in (1, 2)]
    assert rejects[1]["reason"].startswith("no trainable token")
    assert (stats.conversations, stats.rejected, stats.lines_read) == (2, 2, 4)


@pytest.mark.parametrize(("suffix", "where"), [(".json", "in.json index 1"), (".parquet", "in.parquet row 1"), (".jsonl", "in.jsonl:2")])
def test_strict_mode_names_the_position_with_its_unit(tmp_path, suffix, where):
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    path = WRITERS[suffix](tmp_path / f"in{suffix}", [{"messages": ROLE_CONTENT}, {"messages": []}])
    with pytest.raises(CollateError, match=rf"{where}: 'messages' is empty \(strict mode\)"):
        tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(strict=True))


def test_partition_keys_name_every_container():
    from collate_assets.defs.files import output_stem

    for suffix in WRITERS:
        assert output_stem(f"data{suffix}") == "data"
    with pytest.raises(CollateError, match=r"does not name an input file \(\*.jsonl, .*\*.json, \*.parquet\)"):
        output_stem("data.csv")


def test_progress_total_of_gzip_is_its_uncompressed_size(tmp_path):
    path = write_gz(tmp_path / "a.jsonl.gz", [{"messages": ROLE_CONTENT}] * 100)
    assert progress_total(path) == sum(c.bytes_read for c in iter_chunks(path)) > path.stat().st_size


# -- the command -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dagster", [False, True], ids=["no-dagster", "dagster"])
def test_collate_command_reads_json_and_parquet(tmp_path, dagster):
    from collate_assets_tests.e2e.conftest import COLLATE, assert_no_traceback, make_dagster_home, make_env, run

    records = _records(_shared("kto"))[:40]
    folder = tmp_path / "in"
    folder.mkdir()
    write_json(folder / "kto.json", records)
    write_parquet(folder / "kto_rows.parquet", records)
    out = tmp_path / "out"
    home = make_dagster_home(tmp_path / "dagster_home")
    args = [*COLLATE, "-i", folder, "-o", out, "-t", DEMO_TOKENIZER_DIR, "-f", "jsonl", "-m", "4096", "-q", "--json"]
    if not dagster:
        args.append("--no-dagster")
    result = run(args, env=make_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result.stderr)
    stats = json.loads(result.stdout)
    assert [Path(s["tokenize"]["file"]).name for s in stats] == ["kto.json", "kto_rows.parquet"]
    assert all(s["tokenize"]["conversations"] == 40 and s["tokenize"]["rejected"] == 0 for s in stats)
    assert (out / "kto.jsonl").read_bytes() == (out / "kto_rows.jsonl").read_bytes() != b""
    assert (out / "kto.rejects.jsonl").read_bytes() == (out / "kto_rows.rejects.jsonl").read_bytes() == b""
    # Only the Dagster path keeps the tokenized spills beside the outputs and registers partitions.
    # (Checked through the command, not an in-process DagsterInstance: opening one here left a dead
    # instance weakref in Dagster's defs-state context that broke a later test's dg.materialize.)
    assert (out / ".collate_tokenized").exists() == dagster
    if dagster:
        listed = run([*COLLATE, "--register-only"], env=make_env(home, input_dir=folder), cwd=tmp_path, check=True)
        assert listed.stdout.split() == ["kto.json", "kto_rows.parquet"]
