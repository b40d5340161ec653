"""Atomic writes and the packed output formats, without a tokenizer."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from collate_assets.core import OUTPUT_FORMATS, PACKED_SCHEMA, CollateError, atomic_path, file_sha256, read_packed
from collate_assets.core.write.writers import PackedWriter, WriteCounts, packed_writer

ROWS = [
    {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "position_ids": [0, 1, 0, 1, 2],
     "seq_lengths": [2, 3]},
    {"input_ids": [1], "labels": [-100], "position_ids": [0], "seq_lengths": [1]},
    {"input_ids": [2**31 - 1, 0, 3], "labels": [-100, 0, 3], "position_ids": [0, 1, 2], "seq_lengths": [3]},
]


class Boom(Exception):
    pass


def _batch(rows):
    return pa.RecordBatch.from_pylist(rows, schema=PACKED_SCHEMA)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic_path -------------------------------------------------------------------------------------


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and tmp.exists()
        tmp.write_bytes(b"data")
        assert not target.exists()  # nothing visible until the block completes
    assert target.read_bytes() == b"data"
    assert _leftovers(target.parent) == []


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    assert list(tmp_path.iterdir()) == []


# An old file this tool wrote (a rejects line): atomic_path replaces only such files.
OLD_REJECTS = b'{"file":"in.jsonl","line":1,"reason":"invalid JSON","excerpt":"{"}\n'


def test_atomic_path_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "out.rejects.jsonl"
    target.write_bytes(OLD_REJECTS)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
            raise KeyboardInterrupt
    assert target.read_bytes() == OLD_REJECTS and _leftovers(tmp_path) == []


def test_atomic_path_replaces_the_old_file_on_success(tmp_path):
    target = tmp_path / "out.rejects.jsonl"
    target.write_bytes(OLD_REJECTS)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []


# -- packed_writer / read_packed -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_round_trip_every_format(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    with packed_writer(path, fmt) as writer:
        writer.write_batch(_batch(ROWS[:2]))
        writer.write_batch(_batch(ROWS[2:]))
    assert list(read_packed(path, fmt)) == ROWS
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_round_trip_of_zero_rows(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    with packed_writer(path, fmt):
        pass
    assert path.exists() and list(read_packed(path, fmt)) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_writer_failure_leaves_no_output(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(Boom):
        with packed_writer(path, fmt) as writer:
            writer.write_batch(_batch(ROWS))
            raise Boom
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_writer_accepts_sliced_batches(tmp_path, fmt):
    """A sliced batch has non-zero list offsets: rows must still come out whole and in order."""
    path = tmp_path / f"out.{fmt}"
    with packed_writer(path, fmt) as writer:
        writer.write_batch(_batch(ROWS).slice(1, 2))
    assert list(read_packed(path, fmt)) == ROWS[1:]


def test_arrow_output_is_an_ipc_stream_with_int32_lists(tmp_path):
    path = tmp_path / "out.arrow"
    with packed_writer(path, "arrow") as writer:
        writer.write_batch(_batch(ROWS))
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    assert table.schema == PACKED_SCHEMA
    assert table.to_pylist() == ROWS


def test_jsonl_output_is_one_row_a_line(tmp_path):
    path = tmp_path / "out.jsonl"
    with packed_writer(path, "jsonl") as writer:
        writer.write_batch(_batch(ROWS))
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == len(ROWS) + 1 and lines[-1] == b""
    assert lines[1] == b'{"input_ids":[1],"labels":[-100],"position_ids":[0],"seq_lengths":[1]}'


def test_read_packed_reports_a_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"input_ids":[1],"labels":[-100],"position_ids":[0],"seq_lengths":[1]}\n{"input_ids": [\n')
    with pytest.raises(CollateError, match=r"bad.jsonl:2: not a JSON line"):
        list(read_packed(path, "jsonl"))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        list(read_packed(tmp_path / "x.csv", "csv"))
    with pytest.raises(ValueError, match="format must be one of"):
        with packed_writer(tmp_path / "x.csv", "csv"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_file_sha256(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 * 1024 + 5)
    path.write_bytes(data)
    assert file_sha256(path, block=1024) == hashlib.sha256(data).hexdigest()


# -- the writers' shared interface: write_batch / close -> WriteCounts ----------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_close_counts_what_was_written(tmp_path, fmt):
    """close() returns the rows and bytes of the finished file; the rows are the ones read back."""
    path = tmp_path / f"out.{fmt}"
    with packed_writer(path, fmt) as writer:
        assert isinstance(writer, PackedWriter)
        writer.write_batch(_batch(ROWS[:2]))
        writer.write_batch(_batch(ROWS).slice(2, 1))
        writer.write_batch(_batch([]))
        counts = writer.close()
        assert writer.close() == counts  # closing again only returns the counts
    assert counts == WriteCounts(rows=len(list(read_packed(path, fmt))), bytes=path.stat().st_size)
    assert counts.rows == len(ROWS) and counts.bytes > 0
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_close_counts_zero_rows(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    with packed_writer(path, fmt) as writer:
        counts = writer.close()
    assert counts == WriteCounts(rows=0, bytes=path.stat().st_size)
    assert list(read_packed(path, fmt)) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_old_write_name_and_write_after_close(tmp_path, fmt):
    """`write` is kept as an alias of write_batch; writing to a closed writer is refused."""
    path = tmp_path / f"out.{fmt}"
    with packed_writer(path, fmt) as writer:
        writer.write(_batch(ROWS))
        writer.close()
        with pytest.raises(ValueError, match="after close"):
            writer.write_batch(_batch(ROWS))
    assert list(read_packed(path, fmt)) == ROWS


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_closed_writer_still_renames_only_on_success(tmp_path, fmt):
    """Closing inside the block does not publish the file: an error after it leaves nothing."""
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(Boom):
        with packed_writer(path, fmt) as writer:
            writer.write_batch(_batch(ROWS))
            writer.close()
            raise Boom
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_packed_writer_refuses_a_file_it_did_not_write(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(b"my own notes\n")
    with pytest.raises(CollateError, match="did not write"):
        with packed_writer(path, fmt) as writer:
            writer.write_batch(_batch(ROWS))
    assert path.read_bytes() == b"my own notes\n" and _leftovers(tmp_path) == []


def test_one_registry_holds_every_output_format(tmp_path):
    """FORMATS: each format of the settings with its extension, writer and reader; what one writes the
    same one reads back, and a name that is not a format is refused before anything is opened."""
    import numpy as np
    import pyarrow as pa
    import pytest

    from collate_assets.core.settings import EXTENSIONS, OUTPUT_FORMATS
    from collate_assets.core.write.writers import FORMATS, packed_writer, read_packed

    assert tuple(FORMATS) == OUTPUT_FORMATS and {f.name: f.extension for f in FORMATS.values()} == EXTENSIONS
    row = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2], "seq_lengths": [3]}
    batch = pa.record_batch([pa.array([v], pa.list_(pa.int32())) for v in row.values()], names=list(row))
    for fmt in OUTPUT_FORMATS:
        path = tmp_path / f"rows{FORMATS[fmt].extension}"
        with packed_writer(path, fmt) as writer:
            writer.write(batch)
        assert list(read_packed(path, fmt)) == [row], fmt
        [arrays] = list(read_packed(path, fmt, numpy=True))
        assert all(isinstance(v, np.ndarray) and v.tolist() == row[k] for k, v in arrays.items()), fmt
    with pytest.raises(ValueError, match="format must be one of"):
        read_packed(tmp_path / "rows.arrow", "csv")
