"""The bad-input corpus (collate_assets_tests/reliability/bad_input): each case gives the outcome its manifest says.

Every bad line goes to the rejects file beside the output (file, line, reason, start of the line) and is
counted, good lines of the same file are still packed, and lines read = written + rejected + blank. Strict
mode fails on the first bad line with file:line and the reason. A file that cannot be read fails as a
whole - and in Dagster only its own partition.
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import orjson
import pyarrow as pa
import pytest

from collate_assets.core import (
    CollateError,
    CollateSettings,
    collate_file,
    input_stem,
    iter_chunks,
    normalize_conversation,
    read_packed,
    rejects_path_for,
    tokenize_file,
)
from collate_assets.core import DEFAULT_MAX_LINE_BYTES
from collate_assets.core.tokens.chat import ChatEncoder
from collate_assets.defs.partitions import INPUT_FILES
from collate_assets.defs.run import _failure_message
from collate_assets_tests.defs.helpers import arrow_defs, register_folder, run_arrow
from collate_assets.sample import DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import CORPUS_DIR, corpus, corpus_cases, demo_tokenizer, subprocess_env

CASES = corpus_cases()
BOM = b"\xef\xbb\xbf"


def _variants():
    for case in CASES:
        yield pytest.param(case, False, id=case["id"])
        if case["file"].endswith(".jsonl"):
            yield pytest.param(case, True, id=f"{case['id']}-gz")


def _settings(case: dict, strict: bool = False) -> CollateSettings:
    return CollateSettings(strict=strict, **{**corpus()["defaults"], **case.get("settings", {})})


def _input(case: dict, folder: Path, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = CORPUS_DIR / case["file"]
    if gz:
        target = folder / f"{case['file']}.gz"
        target.write_bytes(gzip.compress(source.read_bytes(), mtime=0))
    else:
        target = folder / case["file"]
        shutil.copyfile(source, target)
    return target


def _raw_lines(case: dict) -> list[bytes]:
    """The case file's lines as the reader splits them (on b"\\n" only)."""
    data = (CORPUS_DIR / case["file"]).read_bytes()
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def _excerpt(raw: bytes, line: int) -> str:
    if line == 1 and raw.startswith(BOM):
        raw = raw[3:]
    return raw[:800].decode("utf-8", errors="replace")[:200]


def _collate(case: dict, path: Path, out_dir: Path, strict: bool = False):
    output = out_dir / f"{input_stem(path)}.arrow"
    kwargs = {"max_line_bytes": case["max_line_bytes"]} if "max_line_bytes" in case else {}
    tokenizer = demo_tokenizer(case.get("chat_template"))
    return output, lambda: collate_file(path, output, tokenizer, _settings(case, strict), "arrow", **kwargs)


def _temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.exists() else []


@pytest.mark.parametrize(("case", "gz"), list(_variants()))
def test_corpus_case_gives_its_expected_outcome(case, gz, tmp_path):
    expect = case["expect"]
    path = _input(case, tmp_path / "in", gz)
    output, run = _collate(case, path, tmp_path / "out")
    rejects_file = rejects_path_for(output)
    assert rejects_file.parent == output.parent  # beside the output

    if "file_error" in expect:
        with pytest.raises(CollateError) as info:
            run()
        message = str(info.value)
        for part in expect["file_error"]:
            assert part.replace(case["file"], path.name) in message, message
        assert str(path) in message  # names the file
        assert not output.exists()  # no output at all, never a partial one
        if "rejected" in expect:  # the file could be read: its rejects file says why every line failed
            rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
            assert [r["line"] for r in rejects] == list(range(1, expect["rejected"] + 1))
            assert str(rejects_file) in message
        else:
            assert not rejects_file.exists()
        assert _temp_leftovers(tmp_path / "out") == []
        return

    stats = run()
    tok = stats.tokenize
    assert (tok.lines_read, tok.blank_lines, tok.conversations) == (expect["lines"], expect["blank"], expect["written"])
    assert tok.rejected == len(expect["rejects"]) == sum(tok.reject_reasons.values())
    assert tok.lines_read == tok.conversations + tok.rejected + tok.blank_lines  # the invariant
    assert tok.accounted()
    for field in ("sequences", "truncated", "split", "dropped"):
        if field in expect:
            assert getattr(tok, field) == expect[field], field

    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [line for line, _ in expect["rejects"]]
    raw_lines = _raw_lines(case)
    for reject, (line, reason) in zip(rejects, expect["rejects"]):
        assert set(reject) == {"file", "line", "reason", "excerpt"}
        assert reject["file"] == str(path)
        assert reason in reject["reason"], (reason, reject["reason"])
        assert reject["excerpt"] == _excerpt(raw_lines[line - 1], line)  # the start of the line itself

    # Good lines of the same file are packed: every written conversation is in the output once.
    rows = list(read_packed(output, "arrow"))
    assert sum(len(row["seq_lengths"]) for row in rows) == tok.sequences == stats.pack.sequences
    bad = {line for line, _ in expect["rejects"]}
    good_lines = [n for n, raw in enumerate(raw_lines, 1) if raw.strip() and raw.strip() != BOM and n not in bad]
    assert len(good_lines) == tok.conversations
    if not any(k in expect for k in ("truncated", "split", "dropped")) and _settings(case).labels == "all":
        tokenizer = demo_tokenizer(case.get("chat_template"))
        encoder = ChatEncoder(tokenizer)
        expected = collections.Counter()
        for n in good_lines:
            raw = raw_lines[n - 1]
            conversation = encoder.adapt(normalize_conversation(orjson.loads(raw[3:] if raw.startswith(BOM) else raw)))
            expected[tuple(tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"])] += 1
        got = collections.Counter()
        for row in rows:
            start = 0
            for length in row["seq_lengths"]:
                got[tuple(row["input_ids"][start : start + length])] += 1
                start += length
        assert got == expected
    assert _temp_leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_strict_mode_fails_on_the_first_bad_line(case, tmp_path):
    expect = case["expect"]
    path = _input(case, tmp_path / "in", gz=False)
    output, run = _collate(case, path, tmp_path / "out", strict=True)
    if expect.get("rejects"):
        line, reason = expect["rejects"][0]
        with pytest.raises(CollateError) as info:
            run()
        message = str(info.value)
        assert message.startswith(f"{path}:{line}: ") and reason in message and message.endswith("(strict mode)")
    elif "file_error" in expect:
        with pytest.raises(CollateError) as info:
            run()
        for part in expect.get("strict_error", expect["file_error"]):
            assert part.replace(case["file"], path.name) in str(info.value)
    else:
        stats = run()
        assert (stats.tokenize.conversations, stats.tokenize.rejected) == (expect["written"], 0)
        return
    assert not output.exists() and not rejects_path_for(output).exists()
    assert _temp_leftovers(tmp_path / "out") == []


def test_every_case_file_is_in_the_manifest():
    listed = {case["file"] for case in CASES} | {c.get("chat_template") for c in CASES}
    on_disk = {p.name for p in CORPUS_DIR.iterdir() if p.name not in ("expected.json", ".gitattributes")}
    assert on_disk == listed - {None}
    assert len({case["id"] for case in CASES}) == len(CASES)


def test_empty_assistant_content_still_trains_its_end_of_turn(tokenizer, tmp_path):
    spill = tmp_path / "spill.arrow"
    stats = tokenize_file(CORPUS_DIR / "empty_content.jsonl", spill, tokenizer, CollateSettings(labels="assistant"))
    assert (stats.conversations, stats.rejected) == (3, 0)
    with pa.memory_map(str(spill)) as source:
        records = pa.ipc.open_file(source).read_all().to_pylist()
    for record in records[1:]:  # lines 2 and 3 end with an empty assistant turn
        trained = [t for t in record["labels"] if t != -100]
        assert tokenizer.decode(trained) == "<|im_end|>", record["line"]


# -- long lines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_line_limit_is_exact_and_never_parses_the_long_line(tmp_path, gz):
    limit = 1000
    good = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})

    def line(size: int) -> bytes:  # a valid conversation line of exactly `size` bytes, newline not counted
        head = b'{"messages": [{"role": "user", "content": "'
        tail = b'"}]}'
        return head + b"x" * (size - len(head) - len(tail)) + tail

    body = b"\n".join([line(limit), line(limit + 1), good, line(limit - 1) + b"\r", line(3 * limit), line(limit + 1)])
    path = tmp_path / ("in.jsonl.gz" if gz else "in.jsonl")
    path.write_bytes(gzip.compress(body) if gz else body)
    chunks = list(iter_chunks(path, chunk_lines=2, max_line_bytes=limit))
    rejects = [r for c in chunks for r in c.rejects]
    assert [n for c in chunks for n in c.line_numbers] == [1, 3, 4]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, f"line longer than {limit} bytes ({limit + 1} bytes); not parsed"),
        (5, f"line longer than {limit} bytes ({3 * limit} bytes); not parsed"),
        (6, f"line longer than {limit} bytes ({limit + 1} bytes); not parsed"),  # last line, no newline
    ]
    assert [r.excerpt for r in rejects] == [line(limit + 1)[:200].decode()] * 3  # the start, bounded
    assert sum(c.lines_read for c in chunks) == 6 and sum(c.bytes_read for c in chunks) == len(body)
    assert DEFAULT_MAX_LINE_BYTES == 8 << 20


HUGE_LINE_SCRIPT = r"""
import json, resource, sys
from collate_assets.core import CollateSettings, load_tokenizer, tokenize_file
from collate_assets.sample import DEMO_TOKENIZER_DIR
tokenizer = load_tokenizer(DEMO_TOKENIZER_DIR)
tokenize_file(sys.argv[3], sys.argv[2] + "/warm.arrow", tokenizer, CollateSettings(max_length=256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for path in sys.argv[1].split(","):
    stats = tokenize_file(path, sys.argv[2] + "/spill.arrow", tokenizer, CollateSettings(max_length=256),
                          rejects_path=sys.argv[2] + "/rejects.jsonl")
    rejects = [json.loads(l) for l in open(sys.argv[2] + "/rejects.jsonl")]
    out.append({"stats": stats.to_dict(), "rejects": rejects})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "peak_kib": peak, "runs": out}))
"""


def test_a_huge_line_is_rejected_with_bounded_memory(tmp_path):
    """One ~160 MB JSON line (plain and gzipped): rejected unparsed, the next line is still packed, and
    the process's peak memory grows by far less than the line (it is never held whole)."""
    mib = 1 << 20
    size_mib = 160
    plain = tmp_path / "huge.jsonl"
    good = orjson.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})
    block = b"x" * mib
    with open(plain, "wb") as f:
        f.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(size_mib):
            f.write(block)
        f.write(b'"}, {"role": "assistant", "content": "ok"}]}\n' + good + b"\n")
    packed = tmp_path / "huge.jsonl.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 16 * mib)
    small = tmp_path / "small.jsonl"
    small.write_bytes(good + b"\n")
    line_bytes = plain.stat().st_size - len(good) - 2

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_LINE_SCRIPT, f"{plain},{packed}", str(tmp_path), str(small)],
        env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for run in result["runs"]:
        stats = run["stats"]
        assert (stats["lines_read"], stats["conversations"], stats["rejected"]) == (2, 1, 1)
        [reject] = run["rejects"]
        assert reject["line"] == 1
        assert reject["reason"] == f"line longer than {DEFAULT_MAX_LINE_BYTES} bytes ({line_bytes} bytes); not parsed"
        assert len(reject["excerpt"]) == 200
    growth_mib = (result["peak_kib"] - result["before_kib"]) / 1024
    # Reading holds at most max_line_bytes (8 MiB) of the line; parsing it would take several times 160 MiB.
    assert growth_mib < 64, f"peak memory grew by {growth_mib:.0f} MiB for a {size_mib} MiB line"
    assert time.monotonic() - started < 60


# -- whole files that cannot be read, in Dagster: only their partition fails ------------------------------


def _resources(input_dir: Path, output_dir: Path, **packing) -> dg.Definitions:
    return arrow_defs(input_dir, output_dir, **packing)


def materialize(instance, resources, key) -> dg.ExecuteInProcessResult:
    return run_arrow(instance, resources, key)


def test_a_file_that_cannot_be_read_fails_only_its_partition(tmp_path, caplog):
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    input_dir.mkdir()
    for name in ("good.jsonl", "broken_json.jsonl", "truncated.jsonl.gz", "pretty_printed_array.jsonl"):
        shutil.copyfile(CORPUS_DIR / name, input_dir / name)
    (input_dir / "folder.jsonl").mkdir()
    (input_dir / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    resources = _resources(input_dir, output_dir)
    failures = {
        "truncated.jsonl.gz": "truncated.jsonl.gz: cannot read after line",
        "pretty_printed_array.jsonl": "no usable conversation",
        "folder.jsonl": "folder.jsonl for partition 'folder.jsonl' is a folder, not a file",
        "dangling.jsonl": f"dangling.jsonl for partition 'dangling.jsonl' is a broken symlink (to {tmp_path / 'gone.jsonl'})",
    }
    with dg.instance_for_test() as instance:
        with caplog.at_level(logging.WARNING):
            keys = register_folder(instance, input_dir)
        # The scan leaves out what is not a file, with a warning.
        assert keys == ["broken_json.jsonl", "good.jsonl", "pretty_printed_array.jsonl", "truncated.jsonl.gz"]
        assert "folder.jsonl skipped: is a folder" in caplog.text and "dangling.jsonl skipped: is a broken" in caplog.text
        # As if they had been files when registered and changed since.
        instance.add_dynamic_partitions(INPUT_FILES.name, ["folder.jsonl", "dangling.jsonl"])

        good = materialize(instance, resources, "good.jsonl")
        assert good.success
        good_bytes = (output_dir / "good.arrow").read_bytes()
        results = {key: materialize(instance, resources, key) for key in [*failures, "broken_json.jsonl"]}
        for key, expected in failures.items():
            result = results[key]
            assert not result.success, key
            message = _failure_message(result, input_dir / key)
            assert expected in message, (key, message)
            assert not (output_dir / f"{input_stem(Path(key))}.arrow").exists()
        # A file with some bad lines is fine: written, its rejects reported.
        partial = results["broken_json.jsonl"]
        assert partial.success
        [mat] = partial.asset_materializations_for_node("tokenized_conversations")
        assert (mat.metadata["conversations"].value, mat.metadata["rejected"].value) == (2, 5)
        rejects = output_dir / "broken_json.rejects.jsonl"
        assert [json.loads(line)["line"] for line in rejects.read_text().splitlines()] == [2, 3, 4, 6, 7]
        # The pretty-printed array failed, but its rejects file says why, line by line.
        assert len((output_dir / "pretty_printed_array.rejects.jsonl").read_text().splitlines()) == 26
        # The failures touched nothing of the other partitions.
        assert (output_dir / "good.arrow").read_bytes() == good_bytes
        again = materialize(instance, resources, "good.jsonl")
        assert again.success and (output_dir / "good.arrow").read_bytes() == good_bytes
        materialized = instance.get_materialized_partitions(dg.AssetKey("packed_arrow"))
        assert materialized == {"good.jsonl", "broken_json.jsonl"}


def test_strict_packing_settings_fail_the_partition_at_the_first_bad_line(tmp_path):
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    shutil.copyfile(CORPUS_DIR / "broken_json.jsonl", input_dir / "broken_json.jsonl")
    shutil.copyfile(CORPUS_DIR / "good.jsonl", input_dir / "good.jsonl")
    resources = _resources(input_dir, tmp_path / "out", strict=True)
    with dg.instance_for_test() as instance:
        register_folder(instance, input_dir)
        result = materialize(instance, resources, "broken_json.jsonl")
        assert not result.success
        message = _failure_message(result, input_dir / "broken_json.jsonl")
        assert message.startswith(f"{input_dir / 'broken_json.jsonl'}:2: invalid JSON") and "(strict mode)" in message
        assert materialize(instance, resources, "good.jsonl").success  # strict is about bad lines only


@pytest.mark.parametrize("dagster", [True, False], ids=["dagster", "no-dagster"])
def test_cli_strict_exits_1_naming_file_and_line(tmp_path, monkeypatch, capsys, dagster):
    from collate_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    source = tmp_path / "in" / "broken_json.jsonl"
    source.parent.mkdir()
    shutil.copyfile(CORPUS_DIR / "broken_json.jsonl", source)
    args = ["-i", str(source), "-o", str(tmp_path / "out"), "-m", "256", "-q", "--strict"]
    assert main(args + ([] if dagster else ["--no-dagster"])) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (Dagster may print its telemetry notice first)
    assert err.startswith(f"collate: error: {source}:2: invalid JSON") and err.endswith("(strict mode)")
    assert not (tmp_path / "out" / "broken_json.arrow").exists()
    # Without --strict the same file is collated, its bad lines beside the output.
    assert main(["-i", str(source), "-o", str(tmp_path / "out"), "-m", "256", "-q", "--no-dagster"]) == 0
    out = capsys.readouterr().out
    assert "2 written, 5 rejected" in out
    assert (tmp_path / "out" / "broken_json.rejects.jsonl").is_file()
