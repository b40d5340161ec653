"""Big JSON Lines files read as shards: every line in exactly one shard, with its true line number."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from collate_assets.core import CollateSettings, read_packed
from collate_assets.core.read.reader import iter_raw_chunks
from collate_assets.core.read.shards import count_lines, locate_shard, plan_shards, shard_count, summarize
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR
from collate_assets_tests.helpers import seed_dagster_home, subprocess_env

LINE = st.one_of(
    st.just(b""),
    st.just(b"   "),
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"x")),
    st.just(b'{"messages": []}'),
)


def _whole(path: Path, max_line_bytes: int = 1 << 20) -> list:
    return [(pos, payload) for raw in iter_raw_chunks(path, chunk_lines=7, max_line_bytes=max_line_bytes)
            for pos, payload in raw.records]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=60), trailing=st.booleans(), bom=st.booleans(), shard_bytes=st.integers(1, 300))
def test_shards_hold_every_line_once_with_its_line_number(tmp_path, lines, trailing, bom, shard_bytes):
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    count = shard_count(path, shard_bytes)
    assert count == max(1, -(-len(data) // shard_bytes))
    shards = [locate_shard(path, i, count) for i in range(count)]
    # contiguous, covering the file, each starting at a line start
    assert shards[0].start == 0 and shards[-1].end == len(data)
    for before, after in zip(shards, shards[1:]):
        assert before.end == after.start
        assert after.start == len(data) or data[after.start - 1:after.start] == b"\n"
        assert after.first_line == data[:after.start].count(b"\n") + 1
    # read shard by shard: the same records, at the same positions, as reading the file whole
    parts = []
    lines_read = 0
    for shard in shards:
        raws = list(iter_raw_chunks(path, chunk_lines=7, max_line_bytes=1 << 20, shard=shard))
        parts += [(pos, payload) for raw in raws for pos, payload in raw.records]
        lines_read += sum(raw.lines_read for raw in raws)
    assert parts == _whole(path)
    assert lines_read == count_lines(path)


def test_a_line_over_the_limit_at_a_shard_boundary_is_one_reject_in_one_shard(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 5000 + b"\n" + b'{"b": 2}\n')
    count = shard_count(path, 1000)
    shards = [locate_shard(path, i, count) for i in range(count)]
    records = [(pos, type(payload).__name__) for s in shards
               for raw in iter_raw_chunks(path, max_line_bytes=100, shard=s) for pos, payload in raw.records]
    assert records == [(1, "bytes"), (2, "Bad"), (3, "bytes")]
    assert sum(1 for s in shards if s.start == s.end) >= 3  # the long line leaves shards empty


def test_only_plain_jsonl_is_split(tmp_path):
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.json", "a.parquet"):
        path = tmp_path / name
        path.write_bytes(b"x" * 10_000)
        assert shard_count(path, 100) == 1 and plan_shards(path, 100) is None
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"{}\n" * 4000)
    assert shard_count(plain, 0) == 1 and plan_shards(plain, 0) is None
    assert shard_count(plain, 4000) == 3


def _collate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collate_assets.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_a_sharded_file_is_written_as_numbered_shards_with_a_summary(tmp_path):
    """`collate --shard-mb`: one output per shard, named like the hub's shards; rejects name the file's
    own line numbers; the summary adds up to the file; unsplit, the same sequences come out."""
    lines = (DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines(keepends=True)
    lines[150] = b"not json\n"
    lines[250] = b"\n"
    source = tmp_path / "in" / "big.jsonl"
    source.parent.mkdir()
    source.write_bytes(b"".join(lines))
    shard_mb = source.stat().st_size / 3.5 / (1 << 20)
    common = ["-i", str(source), "-t", str(DEMO_TOKENIZER_DIR), "-m", "1024", "-q", "--no-dagster"]
    split = _collate(*common, "-o", str(tmp_path / "split"), "--shard-mb", f"{shard_mb:.6f}", "--json")
    assert split.returncode == 0, split.stderr
    names = sorted(p.name for p in (tmp_path / "split").glob("big-*-of-00004.arrow"))
    assert names == [f"big-{i:05d}-of-00004.arrow" for i in range(4)]
    assert not (tmp_path / "split" / "big.arrow").exists()

    summary = json.loads((tmp_path / "split" / "big.shards.json").read_text())
    assert summary["problems"] == [] and summary["shard_count"] == 4
    assert summary["file_lines"] == summary["lines_read"] == len(lines)
    assert summary["lines_read"] == summary["conversations"] + summary["rejected"] + summary["blank_lines"]
    assert (summary["rejected"], summary["blank_lines"]) == (1, 1)
    rejects = [json.loads(line) for p in (tmp_path / "split").glob("big-*.rejects.jsonl") for line in p.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [151]

    whole = _collate(*common, "-o", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    def sequences(paths):
        out = []
        for path in paths:
            for row in read_packed(path, "arrow"):
                start = 0
                for length in row["seq_lengths"]:
                    out.append(tuple(row["input_ids"][start:start + length]))
                    start += length
        return sorted(out)

    assert sequences((tmp_path / "split").glob("big-*.arrow")) == sequences([tmp_path / "whole" / "big.arrow"])

    # through Dagster: the same files, one partition a shard; a rerun keeps them all
    env = subprocess_env(DAGSTER_HOME=str(seed_dagster_home(tmp_path / "home")))
    args = ["-i", str(source), "-t", str(DEMO_TOKENIZER_DIR), "-m", "1024", "-q", "-o", str(tmp_path / "dagster"),
            "--shard-mb", f"{shard_mb:.6f}"]
    first = _collate(*args, env=env)
    assert first.returncode == 0, first.stderr
    for i in range(4):
        name = f"big-{i:05d}-of-00004.arrow"
        assert (tmp_path / "dagster" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()
    second = _collate(*args, env=env)
    assert "4 of 4 partitions (shards count one each) unchanged" in second.stderr, second.stderr

    # edited (a line added): written again, the summary too (it is a file this tool wrote)
    with open(source, "ab") as f:
        f.write(lines[0])
    again = _collate(*common, "-o", str(tmp_path / "split"), "--shard-mb", f"{shard_mb:.6f}")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "split" / "big.shards.json").read_text())["lines_read"] == len(lines) + 1


def test_summarize_names_a_gap_between_shards(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"{}\n" * 10)
    stats = [
        {"shard": {"index": 0, "count": 2, "start": 0, "end": 15, "first_line": 1}, "lines_read": 5, "blank_lines": 0,
         "conversations": 5, "rejected": 0, "sequences": 5, "tokens": 5, "trained_tokens": 5},
        {"shard": {"index": 1, "count": 2, "start": 18, "end": 30, "first_line": 7}, "lines_read": 4, "blank_lines": 0,
         "conversations": 4, "rejected": 0, "sequences": 4, "tokens": 4, "trained_tokens": 4},
    ]
    problems = summarize(path, stats, 2, input_sha256="x", settings_fingerprint="y")["problems"]
    assert any("00001-of-00002 starts at byte 18" in p for p in problems)
    assert any("read 9 lines; the file has 10" in p for p in problems)
    assert summarize(path, stats[:1], 2, input_sha256="x", settings_fingerprint="y")["problems"] == ["shards missing: 00001-of-00002"]


def test_shard_mb_is_a_setting():
    assert CollateSettings.from_env({"COLLATE_SHARD_MB": "0.5"}).shard_bytes() == 1 << 19
    assert CollateSettings().shard_bytes() == 0
    with pytest.raises(ValueError, match="COLLATE_SHARD_MB"):
        CollateSettings.from_env({"COLLATE_SHARD_MB": "-1"})
