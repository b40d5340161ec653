"""A training set mixed from tokenized sources: weights, duplicates, a stable validation split, one
packing across sources, shuffled shards that `datasets` reads, and the same bytes on every run."""

import collections
import json
import shutil

import numpy as np
import pytest

from collate_assets.core import CollateError, CollateSettings, load_tokenizer, read_packed, tokenize_file
from collate_assets.core.pack.mix import MANIFEST_NAME, MixSettings, MixSource, build_mix
from collate_assets.core.pack.spill import _batches, _open_spill
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

MAX_LENGTH = 1024


@pytest.fixture(scope="module")
def spills(tmp_path_factory):
    """Spills of: the demo file (a), the small demo file (b), 40 lines of the demo (c: all duplicates of a)."""
    folder = tmp_path_factory.mktemp("spills")
    settings = CollateSettings(max_length=MAX_LENGTH, workers=1)
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    (folder / "c.jsonl").write_bytes(b"".join((DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines(keepends=True)[100:140]))
    out = {}
    for name, source in (("a", DEMO_INPUT_DIR / "demo.jsonl"), ("b", DEMO_INPUT_DIR / "demo_small.jsonl"), ("c", folder / "c.jsonl")):
        tokenize_file(source, folder / f"{name}.arrow", tokenizer, settings)
        out[name] = str(folder / f"{name}.arrow")
    return out


def sequences_of(spill: str) -> dict[int, list[tuple]]:
    """The sequences (input_ids, labels) of each input line of a spill."""
    by_line = collections.defaultdict(list)
    with _open_spill(spill) as reader:
        count = reader.num_record_batches
    for _, batch in _batches(spill, range(count)):
        for row in batch.to_pylist():
            by_line[row["line"]].append((tuple(row["input_ids"]), tuple(row["labels"])))
    return by_line


def packed_sequences(folder, prefix) -> collections.Counter:
    """The input_ids of every sequence in the shards `prefix-*.arrow`, as a multiset."""
    out = collections.Counter()
    for path in sorted(folder.glob(f"{prefix}-*.arrow")):
        for row in read_packed(path, "arrow"):
            start = 0
            for length in row["seq_lengths"]:
                out[tuple(row["input_ids"][start:start + length])] += 1
                start += length
    return out


def test_a_mix_weights_dedups_splits_and_writes_the_same_bytes_every_time(spills, tmp_path):
    sources = [MixSource("a", 1.0, [spills["a"]]), MixSource("b", 2.5, [spills["b"]]), MixSource("c", 1.0, [spills["c"]])]
    settings = MixSettings(max_length=MAX_LENGTH, seed=7, validation_share=0.1, shard_rows=16)
    stats = build_mix(sources, tmp_path / "one", settings)
    build_mix(sources, tmp_path / "two", settings)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert MANIFEST_NAME in names and any(n.startswith("validation-") for n in names)
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    a, b, c = (stats.sources[k] for k in "abc")
    # c repeats 40 lines of a: all of them are dropped (a is listed first)
    assert c["duplicates_dropped"] == c["conversations"] == 40 and c["train_tokens"] == 0
    # weight 2.5: each kept training conversation twice, or three times
    assert 2 * b["train_conversations_before_weighting"] <= b["train_conversations"] <= 3 * b["train_conversations_before_weighting"]
    assert 0.3 < b["train_conversations"] / b["train_conversations_before_weighting"] - 2 < 0.7
    assert 0 < a["validation_conversations"] < 0.2 * a["conversations"]

    # what is in the shards is what the sources give: each kept conversation's sequences, copies included
    train, validation = packed_sequences(tmp_path / "one", "train"), packed_sequences(tmp_path / "one", "validation")
    assert sum(train.values()) == stats.splits["train"]["sequences"]
    assert not set(train) & set(validation)  # no conversation in both splits
    assert sum(len(s) * n for s, n in train.items()) == a["train_tokens"] + b["train_tokens"]
    a_lines = sequences_of(spills["a"])
    assert all(any(ids in train or ids in validation for ids, _ in seqs) for seqs in a_lines.values())

    # one packing across the sources, within 0.1 % of the fewest rows possible
    for split in stats.splits.values():
        assert split["rows"] <= split["lower_bound_rows"] * 1.001 + 1
    # the rows are shuffled: not in the decreasing order best-fit decreasing makes them
    firsts = [row["seq_lengths"][0] for row in read_packed(tmp_path / "one" / stats.splits["train"]["files"][0], "arrow")]
    assert firsts != sorted(firsts, reverse=True)

    manifest = json.loads((tmp_path / "one" / MANIFEST_NAME).read_text())
    assert manifest["files"] == stats.files and manifest["sources"]["b"]["weight"] == 2.5

    import datasets

    loaded = datasets.load_dataset("arrow", data_files={
        "train": str(tmp_path / "one" / "train-*.arrow"), "validation": str(tmp_path / "one" / "validation-*.arrow")})
    assert loaded["train"].num_rows == stats.splits["train"]["rows"]
    assert loaded["validation"].num_rows == stats.splits["validation"]["rows"]


def test_the_validation_split_stays_put_when_sources_are_added_and_the_seed_changes(spills, tmp_path):
    settings = MixSettings(max_length=MAX_LENGTH, seed=1, validation_share=0.2, shard_rows=1000)
    build_mix([MixSource("b", 1.0, [spills["b"]])], tmp_path / "alone", settings)
    build_mix([MixSource("a", 1.0, [spills["a"]]), MixSource("b", 1.0, [spills["b"]])], tmp_path / "with_a",
              MixSettings(max_length=MAX_LENGTH, seed=2, validation_share=0.2, shard_rows=1000))
    alone = packed_sequences(tmp_path / "alone", "validation")
    with_a = packed_sequences(tmp_path / "with_a", "validation")
    assert alone and set(alone) <= set(with_a)


def test_a_new_mix_replaces_only_the_files_of_the_one_before(spills, tmp_path):
    out = tmp_path / "mix"
    sources = [MixSource("a", 1.0, [spills["a"]])]
    first = build_mix(sources, out, MixSettings(max_length=MAX_LENGTH, shard_rows=10))
    (out / "notes.txt").write_text("mine")
    second = build_mix(sources, out, MixSettings(max_length=MAX_LENGTH, shard_rows=40))
    assert len(first.files) > len(second.files)
    assert sorted(p.name for p in out.iterdir()) == sorted([*second.files, MANIFEST_NAME, "notes.txt"])
    # a file of the same name that the previous mix did not write is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "train-00000-of-00001.arrow").write_text("not ours")
    with pytest.raises(CollateError, match="not replaced"):
        build_mix(sources, other, MixSettings(max_length=MAX_LENGTH, shard_rows=100_000))
    assert (other / "train-00000-of-00001.arrow").read_text() == "not ours"


def test_a_mix_with_nothing_to_train_on_fails_with_the_counts(spills, tmp_path):
    with pytest.raises(CollateError, match="no training conversation: a: 300 conversations, 14 duplicates, weight 0"):
        build_mix([MixSource("a", 0.0, [spills["a"]])], tmp_path / "m", MixSettings(max_length=MAX_LENGTH))
    assert not (tmp_path / "m").exists()


def test_sequences_longer_than_the_mix_rows_are_refused(spills, tmp_path):
    with pytest.raises(CollateError, match="max_length"):
        build_mix([MixSource("a", 1.0, [spills["a"]])], tmp_path / "m", MixSettings(max_length=64))


def test_ratios_give_the_shares_of_training_tokens_without_repeating_a_conversation(spills, tmp_path):
    sources = [MixSource("a", 1.0, [spills["a"]], ratio=3), MixSource("b", 1.0, [spills["b"]], ratio=1)]
    stats = build_mix(sources, tmp_path / "m", MixSettings(max_length=MAX_LENGTH, seed=5, shard_rows=1000))
    a, b = stats.sources["a"], stats.sources["b"]
    # b runs out first (it is far smaller): taken whole; a is down-sampled to three times b's tokens
    assert b["weight"] == 1.0 and b["train_tokens"] == b["train_tokens_before_weighting"]
    assert 0 < a["weight"] < 1
    assert 2.5 < a["train_tokens"] / b["train_tokens"] < 3.5
    with pytest.raises(CollateError, match="every source a ratio"):
        build_mix([sources[0], MixSource("c", 1.0, [spills["c"]])], tmp_path / "n", MixSettings(max_length=MAX_LENGTH))
