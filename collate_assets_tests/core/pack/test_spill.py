"""Packing a spill (core/pack/spill.py) without a tokenizer: spills are written here with random sequences."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from collate_assets.core import OUTPUT_FORMATS, CollateError, CollateSettings, file_sha256, read_packed
from collate_assets.core.settings import IGNORE_INDEX
from collate_assets.core.pack.spill import pack_spill, spill_lengths
from collate_assets.core.tokens.sequences import SPILL_SCHEMA_V1 as SPILL_SCHEMA  # spills before uncut_hash: still read

MAX_LENGTH = 512


def write_spill(path, sequences, batch_sizes=(7, 1, 30)) -> None:
    """A spill of `sequences` [(input_ids, labels), ...] in record batches of the given sizes, in turn."""
    sizes = iter(np.resize(batch_sizes, len(sequences) + 1))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
        start = 0
        while start < len(sequences):
            chunk = sequences[start : start + int(next(sizes))]
            writer.write_batch(pa.record_batch(
                [pa.array([ids for ids, _ in chunk], pa.list_(pa.int32())),
                 pa.array([labels for _, labels in chunk], pa.list_(pa.int32())),
                 pa.array(range(start, start + len(chunk)), pa.int64())],
                schema=SPILL_SCHEMA,
            ))
            start += len(chunk)


def random_sequences(count: int, seed: int = 0, max_length: int = MAX_LENGTH) -> list[tuple[list, list]]:
    """Sequences of 1..max_length tokens; each one's first token is its number, so it can be told apart.
    Each starts as every sequence the tokenize step writes does (tokens/sequences.py): its first label ignored."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        length = int(min(max_length, rng.geometric(1 / 90)))
        ids = [n, *rng.integers(0, 50_000, length - 1).tolist()]
        labels = [IGNORE_INDEX if t < 0.3 or k == 0 else int(i) for k, (t, i) in enumerate(zip(rng.random(length), ids))]
        out.append((ids, labels))
    return out


@pytest.fixture(scope="module")
def sequences():
    return random_sequences(700)


@pytest.fixture(scope="module")
def spill(tmp_path_factory, sequences):
    path = tmp_path_factory.mktemp("spill") / "spill.arrow"
    write_spill(path, sequences)
    return path


def sequences_of(rows) -> list[tuple[list, list, list]]:
    """The (input_ids, labels, position_ids) of each sequence of packed rows, cut at seq_lengths."""
    out = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lengths"])
        assert 0 < len(row["input_ids"]) <= MAX_LENGTH
        start = 0
        for n in row["seq_lengths"]:
            end = start + n
            out.append((row["input_ids"][start:end], row["labels"][start:end], row["position_ids"][start:end]))
            start = end
    return out


@pytest.mark.parametrize("packing", ("bfd", "greedy"))
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_packed_rows_hold_every_sequence_once(spill, sequences, tmp_path, fmt, packing, monkeypatch):
    """Read back, the rows hold each sequence of the spill exactly once, its labels with -100 at its
    start and its position_ids counting from 0; the statistics count what is in the file."""
    monkeypatch.setattr("collate_assets.core.pack.spill.WRITE_BATCH_TOKENS", 3000)  # several write groups
    monkeypatch.setattr("collate_assets.core.pack.spill.RELEASE_BYTES", 10_000)  # the map re-opened many times
    out = tmp_path / f"out.{fmt}"
    stats = pack_spill(spill, out, fmt, CollateSettings(max_length=MAX_LENGTH, packing=packing))
    rows = list(read_packed(out, fmt))
    found = sequences_of(rows)
    assert Counter(ids[0] for ids, _, _ in found) == Counter(range(len(sequences)))
    for ids, labels, positions in found:
        want_ids, want_labels = sequences[ids[0]]
        assert ids == want_ids
        assert labels == want_labels
        assert positions == list(range(len(ids)))
    assert (stats.rows, stats.sequences) == (len(rows), len(sequences))
    assert stats.tokens == sum(len(ids) for ids, _ in sequences)
    assert stats.trained_tokens == sum(sum(t != IGNORE_INDEX for t in labels) for _, labels, _ in found)
    assert stats.max_row_tokens == max(len(row["input_ids"]) for row in rows)
    assert set(stats.stage_seconds) == {"read", "pack", "gather", "write"}
    assert all(isinstance(s, float) and s >= 0 for s in stats.stage_seconds.values())


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_output_does_not_depend_on_how_much_of_the_spill_is_mapped(spill, tmp_path, fmt, monkeypatch):
    """Re-mapping the spill every few bytes (every batch) or never gives the same bytes."""
    digests = set()
    for release in (1, 50_000, 1 << 40):
        monkeypatch.setattr("collate_assets.core.pack.spill.RELEASE_BYTES", release)
        out = tmp_path / f"{release}.{fmt}"
        pack_spill(spill, out, fmt, CollateSettings(max_length=MAX_LENGTH))
        digests.add(file_sha256(out))
    assert len(digests) == 1


def test_spill_lengths_are_the_sequence_lengths(spill, sequences):
    lengths = spill_lengths(spill)
    assert lengths.dtype == np.int64
    assert lengths.tolist() == [len(ids) for ids, _ in sequences]


def test_a_spill_without_record_batches_packs_to_an_empty_output(tmp_path):
    spill = tmp_path / "spill.arrow"
    write_spill(spill, [])
    assert spill_lengths(spill).tolist() == []
    stats = pack_spill(spill, tmp_path / "out.arrow", "arrow", CollateSettings(max_length=MAX_LENGTH))
    assert (stats.rows, stats.sequences, stats.tokens) == (0, 0, 0)
    assert list(read_packed(tmp_path / "out.arrow", "arrow")) == []


@pytest.mark.parametrize("damage", ("empty", "truncated", "missing", "not arrow"))
def test_a_damaged_spill_fails_with_a_message(spill, tmp_path, damage):
    broken = tmp_path / "spill.arrow"
    data = spill.read_bytes()
    if damage == "empty":
        broken.write_bytes(b"")
    elif damage == "truncated":
        broken.write_bytes(data[: len(data) // 2])
    elif damage == "not arrow":
        broken.write_bytes(b'{"input_ids": [1]}\n' * 100)
    with pytest.raises(CollateError, match="spill"):
        pack_spill(broken, tmp_path / "out.arrow", "arrow", CollateSettings(max_length=MAX_LENGTH))
    assert not (tmp_path / "out.arrow").exists()


def test_labels_of_another_length_than_input_ids_are_refused(tmp_path):
    spill = tmp_path / "spill.arrow"
    write_spill(spill, [([1, 2, 3], [1, 2, 3]), ([4, 5], [4])])
    with pytest.raises(CollateError, match="differ in length"):
        pack_spill(spill, tmp_path / "out.arrow", "arrow", CollateSettings(max_length=MAX_LENGTH))


# A child process packs a spill and prints its peak RSS (which counts the spill's mapped pages)
# before and after packing: ru_maxrss is exact, where sampling could miss a peak.
_MEASURE = """
import json, resource, sys
from collate_assets.core import CollateSettings
import collate_assets.core.pack.spill as spill
spill.WRITE_BATCH_TOKENS = 1 << 18
spill.RELEASE_BYTES = 1 << 22
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = spill.pack_spill(sys.argv[1], sys.argv[2], "arrow", CollateSettings(max_length=8192))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "tokens": stats.tokens}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and file-backed RSS: Linux")
def test_packing_does_not_keep_the_spill_resident(tmp_path):
    """Packing a 96 MB spill grows the peak RSS by far less than the spill: the mapped pages are let go."""
    tokens_per_batch, batches = 1 << 20, 12  # 12 Mi tokens: 96 MiB of input_ids and labels
    rng = np.random.default_rng(1)
    spill = tmp_path / "spill.arrow"
    with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
        for _ in range(batches):
            lengths = rng.integers(1, 2048, tokens_per_batch // 1024)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            values = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
            ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
            values[offsets[:-1]] = IGNORE_INDEX  # each sequence's first label, as the tokenize step writes it
            labels = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
            writer.write_batch(pa.record_batch([ids, labels, pa.array(np.arange(len(lengths)))], schema=SPILL_SCHEMA))
    size_mb = spill.stat().st_size / 2**20
    child = subprocess.run([sys.executable, "-c", _MEASURE, str(spill), str(tmp_path / "out.arrow")],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    measured = json.loads(child.stdout)
    growth_mb = (measured["after_kb"] - measured["before_kb"]) / 1024
    assert size_mb > 90 and measured["tokens"] > 11 << 20
    assert growth_mb < 40, f"peak RSS grew by {growth_mb:.0f} MB packing a {size_mb:.0f} MB spill"


def test_arrays_views_are_those_of_pyarrow():
    """to_numpy gives what pyarrow's to_numpy gives (sliced, empty, list offsets and values, int64);
    to_arrow gives what pa.array gives; a null is refused rather than read as a number."""
    from collate_assets.core.write.arrays import to_arrow, to_numpy

    lists = pa.array([[1, 2], [], [3, 4, 5], [6]], pa.list_(pa.int32()))
    cases = [pa.array(np.arange(10, dtype=np.int64)), pa.array(np.arange(10, dtype=np.int32)).slice(3, 4),
             pa.array([], pa.int32()), lists.offsets, lists.values, lists.slice(1, 2).offsets]
    for array in cases:
        got = to_numpy(array)
        assert got.dtype == array.type.to_pandas_dtype() and got.tolist() == array.to_pylist()
    values = np.array([5, -100, 7], dtype=np.int32)
    assert to_arrow(values, pa.int32()).equals(pa.array(values))
    assert to_arrow(np.array([1, 2]), pa.int32()).type == pa.int32()
    with pytest.raises(ValueError, match="nulls"):
        to_numpy(pa.array([1, None], pa.int32()))


def test_position_ids_restart_at_every_sequence_even_after_an_empty_one():
    from collate_assets.core.pack.spill import _positions

    rng = np.random.default_rng(3)
    for _ in range(300):
        lengths = rng.integers(0, 6, size=int(rng.integers(0, 9))).astype(np.int32)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        want = [p for n in lengths.tolist() for p in range(n)]
        got = _positions(starts, lengths, int(lengths.sum()))
        assert got.dtype == np.int32 and got.tolist() == want


_NO_PANDAS = """
import sys
from collate_assets.core import CollateSettings, OUTPUT_FORMATS, read_packed
from collate_assets.core.pack.spill import pack_spill, spill_lengths
spill, out = sys.argv[1], sys.argv[2]
spill_lengths(spill)
for fmt in OUTPUT_FORMATS:
    pack_spill(spill, f"{out}.{fmt}", fmt, CollateSettings(max_length=512))
    sum(len(row["input_ids"]) for row in read_packed(f"{out}.{fmt}", fmt, numpy=True))
print("pandas" in sys.modules)
"""


def test_packing_and_reading_back_do_not_import_pandas(spill, tmp_path):
    """pyarrow imports pandas (0.25-0.4 s) on the first pa.array(ndarray) or to_numpy(): the engine's
    serial path avoids both."""
    child = subprocess.run([sys.executable, "-c", _NO_PANDAS, str(spill), str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "False"


def test_a_spill_whose_sequence_trains_its_first_label_is_refused(tmp_path):
    """Packing never changes a label: a sequence not made by the tokenize step (first label trained) is an error."""
    path = tmp_path / "spill.arrow"
    write_spill(path, [([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [4, 5])])
    with pytest.raises(CollateError, match="first label trained"):
        pack_spill(path, tmp_path / "out.arrow", "arrow", CollateSettings(max_length=MAX_LENGTH))
    assert not (tmp_path / "out.arrow").exists()
