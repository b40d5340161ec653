"""A training set mixed from tokenized sources: weights, duplicates, a stable validation split, one
packing across sources, shuffled shards that `datasets` reads, and the same bytes on every run."""

import collections
import dataclasses
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
    # weight 0 leaves the source out: its files are not even read
    with pytest.raises(CollateError, match=r"no training conversation: a: absent \(weight 0\)"):
        build_mix([MixSource("a", 0.0, [spills["a"]])], tmp_path / "m", MixSettings(max_length=MAX_LENGTH))
    with pytest.raises(CollateError, match="no training conversation: a: 300 conversations, 14 duplicates, weight 1e-09"):
        build_mix([MixSource("a", 1e-9, [spills["a"]])], tmp_path / "m", MixSettings(max_length=MAX_LENGTH))
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


# Budgets (issue 25): ratios, tokens and weights met to within one conversation by a seeded
# selection, counted by trained tokens (or all); absent sources; duplicates by cause.


@pytest.fixture(scope="module")
def assistant_spills(tmp_path_factory):
    """The demo files (a, b) tokenized with labels=assistant: trained tokens are not all tokens."""
    folder = tmp_path_factory.mktemp("assistant_spills")
    settings = CollateSettings(max_length=MAX_LENGTH, workers=1, labels="assistant")
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    out = {}
    for name, source in (("a", DEMO_INPUT_DIR / "demo.jsonl"), ("b", DEMO_INPUT_DIR / "demo_small.jsonl")):
        tokenize_file(source, folder / f"{name}.arrow", tokenizer, settings)
        out[name] = str(folder / f"{name}.arrow")
    return out


def _tokens(seqs, by: str) -> int:
    return sum(len(ids) if by == "all" else sum(1 for label in labels if label != -100) for ids, labels in seqs)


def largest_conversation(spill: str, by: str = "trained") -> int:
    """The most tokens (trained, or all) of one conversation of a spill: the tolerance of a budget."""
    return max(_tokens(seqs, by) for seqs in sequences_of(spill).values())


def train_tokens_by_source(folder, spills_in_order: dict[str, str], by: str = "trained") -> dict[str, int]:
    """Tokens (trained or all) of each source in the train shards, read back from the shards: each
    packed sequence is the source's that lists it first (a duplicate is kept from the first source)."""
    owner = {}
    for name, spill in spills_in_order.items():
        for seqs in sequences_of(spill).values():
            for seq in seqs:
                owner.setdefault(seq, name)
    out = dict.fromkeys(spills_in_order, 0)
    for path in sorted(folder.glob("train-*.arrow")):
        for row in read_packed(path, "arrow"):
            start = 0
            for length in row["seq_lengths"]:
                seq = (tuple(row["input_ids"][start:start + length]), tuple(row["labels"][start:start + length]))
                out[owner[seq]] += _tokens([seq], by)
                start += length
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ratios_are_met_by_trained_tokens_within_one_conversation_for_every_seed(assistant_spills, tmp_path, seed):
    # The issue: 0.7 / 0.3 gave 0.72, 0.60, 0.69, 0.74 for seeds 0-3 (coin flips), and by all tokens.
    a, b = assistant_spills["a"], assistant_spills["b"]
    sources = [MixSource("a", 1.0, [a], ratio=0.7), MixSource("b", 1.0, [b], ratio=0.3)]
    stats = build_mix(sources, tmp_path / "m", MixSettings(max_length=MAX_LENGTH, seed=seed))
    got = train_tokens_by_source(tmp_path / "m", {"a": a, "b": b})
    total = got["a"] + got["b"]
    # b, far smaller, is taken whole; a is selected to 7/3 of b's trained tokens within one conversation
    # (the nearer of the two prefixes around the budget: within half of the conversation between them)
    assert abs(got["a"] - 0.7 / 0.3 * got["b"]) <= largest_conversation(a) / 2
    assert abs(got["a"] / total - 0.7) <= largest_conversation(a) / 2 / total
    assert got["b"] == stats.sources["b"]["train_trained_tokens_before_weighting"]
    assert stats.sources["a"]["budget_tokens_got"] == got["a"] and stats.sources["a"]["budget_met"]
    assert stats.sources["a"]["share_asked"] == 0.7 and abs(stats.sources["a"]["share_got"] - got["a"] / total) < 1e-6


def test_ratios_by_all_tokens(assistant_spills, tmp_path):
    a, b = assistant_spills["a"], assistant_spills["b"]
    sources = [MixSource("a", 1.0, [a], ratio=0.7), MixSource("b", 1.0, [b], ratio=0.3)]
    stats = build_mix(sources, tmp_path / "m", MixSettings(max_length=MAX_LENGTH, seed=0, budget_by="all"))
    got = train_tokens_by_source(tmp_path / "m", {"a": a, "b": b}, by="all")
    assert got["b"] == stats.sources["b"]["train_tokens_before_weighting"]
    assert abs(got["a"] - 0.7 / 0.3 * got["b"]) <= largest_conversation(a, "all")
    assert stats.sources["a"]["budget_tokens_got"] == got["a"] == stats.sources["a"]["train_tokens"]
    assert json.loads((tmp_path / "m" / MANIFEST_NAME).read_text())["settings"]["budget_by"] == "all"


def test_a_tokens_budget_is_met_within_one_conversation_and_max_repeats_caps_it(assistant_spills, tmp_path):
    a, b = assistant_spills["a"], assistant_spills["b"]
    settings = MixSettings(max_length=MAX_LENGTH, seed=4)
    stats = build_mix([MixSource("a", 1.0, [a], tokens=20_000), MixSource("b", 1.0, [b])], tmp_path / "m", settings)
    got = train_tokens_by_source(tmp_path / "m", {"a": a, "b": b})
    assert abs(got["a"] - 20_000) <= largest_conversation(a)
    figures = stats.sources["a"]
    assert figures["asked"] == "tokens" and figures["tokens_asked"] == 20_000 and figures["budget_tokens_got"] == got["a"]
    assert figures["budget_met"] and figures["max_repeats"] == 1
    assert got["b"] == stats.sources["b"]["train_trained_tokens_before_weighting"]  # weight 1 beside a budget

    # three times what b has: max_repeats 1 (the default) gives b once, reported short
    once = build_mix([MixSource("b", 1.0, [b])], tmp_path / "once", settings)
    available = once.sources["b"]["train_trained_tokens_before_weighting"]
    stats = build_mix([MixSource("b", 1.0, [b], tokens=3 * available)], tmp_path / "short", settings)
    short = stats.sources["b"]
    assert short["budget_tokens_got"] == available and short["budget_short_by"] == 2 * available
    assert not short["budget_met"] and short["budget_tokens_asked"] == 3 * available
    assert json.loads((tmp_path / "short" / MANIFEST_NAME).read_text())["sources"]["b"]["budget_met"] is False
    # max_repeats 2: twice, still short; max_repeats 4: three times, to within one conversation
    stats = build_mix([MixSource("b", 1.0, [b], tokens=3 * available, max_repeats=2)], tmp_path / "twice", settings)
    assert stats.sources["b"]["budget_tokens_got"] == 2 * available and not stats.sources["b"]["budget_met"]
    stats = build_mix([MixSource("b", 1.0, [b], tokens=3 * available, max_repeats=4)], tmp_path / "thrice", settings)
    assert abs(stats.sources["b"]["budget_tokens_got"] - 3 * available) <= largest_conversation(b)
    assert stats.sources["b"]["budget_met"]


def test_ratios_up_sample_a_small_source_up_to_its_max_repeats(assistant_spills, tmp_path):
    a, b = assistant_spills["a"], assistant_spills["b"]
    sources = [MixSource("a", 1.0, [a], ratio=0.3), MixSource("b", 1.0, [b], ratio=0.7, max_repeats=3)]
    stats = build_mix(sources, tmp_path / "m", MixSettings(max_length=MAX_LENGTH, seed=2))
    got = train_tokens_by_source(tmp_path / "m", {"a": a, "b": b})
    # b runs out first even three times over: taken exactly three times; a to 3/7 of that
    assert got["b"] == 3 * stats.sources["b"]["train_trained_tokens_before_weighting"]
    assert abs(got["a"] - 0.3 / 0.7 * got["b"]) <= largest_conversation(a)
    assert packed_sequences(tmp_path / "m", "train").most_common(1)[0][1] == 3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weight_two_and_a_half_is_exact(assistant_spills, tmp_path, seed):
    b = assistant_spills["b"]
    stats = build_mix([MixSource("b", 2.5, [b])], tmp_path / "m", MixSettings(max_length=MAX_LENGTH, seed=seed))
    got = train_tokens_by_source(tmp_path / "m", {"b": b})["b"]
    trained = {ids: _tokens(seqs, "trained") for seqs in sequences_of(b).values() for ids, _ in seqs}
    train = packed_sequences(tmp_path / "m", "train")
    assert set(train.values()) == {2, 3}  # every conversation twice, some a third time
    assert abs(got - 2.5 * sum(trained[ids] for ids in train)) <= largest_conversation(b) / 2
    assert stats.sources["b"]["train_trained_tokens_before_weighting"] == sum(trained[ids] for ids in train)
    assert stats.sources["b"]["weight"] == 2.5 and stats.sources["b"]["budget_met"]


def test_weight_0_leaves_a_source_out_without_removing_the_others_copies(spills, tmp_path):
    # c repeats 40 lines of a; listed first with weight 0, it used to take those 40 conversations
    # out of a as duplicates, then drop them itself: a lost them.
    settings = MixSettings(max_length=MAX_LENGTH, seed=3, validation_share=0.1, shard_rows=16)
    alone = build_mix([MixSource("a", 1.0, [spills["a"]])], tmp_path / "alone", settings)
    stats = build_mix([MixSource("c", 0.0, [spills["c"]]), MixSource("a", 1.0, [spills["a"]])], tmp_path / "with_c", settings)
    assert stats.sources["a"]["duplicates_dropped"] == alone.sources["a"]["duplicates_dropped"] == 14
    assert stats.sources["a"]["train_tokens"] == alone.sources["a"]["train_tokens"]
    assert stats.sources["c"]["absent"] and stats.sources["c"]["conversations"] == 0
    assert stats.files == alone.files
    for name in stats.files:
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "with_c" / name).read_bytes(), name
    # ratio 0 and tokens 0 too
    for absent in (MixSource("c", 1.0, [spills["c"]], tokens=0),):
        stats = build_mix([absent, MixSource("a", 1.0, [spills["a"]])], tmp_path / "tokens0", settings)
        assert stats.sources["c"]["absent"] and stats.sources["a"]["train_tokens"] == alone.sources["a"]["train_tokens"]
    stats = build_mix([MixSource("c", 1.0, [spills["c"]], ratio=0), MixSource("a", 1.0, [spills["a"]], ratio=1)],
                      tmp_path / "ratio0", settings)
    assert stats.sources["c"]["absent"] and stats.sources["a"]["train_tokens"] == alone.sources["a"]["train_tokens"]


def test_duplicates_are_counted_by_cause(tmp_path):
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    settings = CollateSettings(max_length=48, workers=1, overlong="truncate")
    story = "Bread rises because yeast eats the sugars in the flour and gives off carbon dioxide, " * 4

    def record(ident, ending):
        return json.dumps({"id": ident, "conversations": [
            {"from": "human", "value": "Why does bread rise?"}, {"from": "gpt", "value": story + ending}]}) + "\n"

    (tmp_path / "first.jsonl").write_text(record("x", "The end."))
    # the same record again (identical input), one that differs after the cut (identical after
    # truncation) and one of its own
    (tmp_path / "second.jsonl").write_text(record("y", "The end.") + record("z", "Something else entirely.")
                                          + json.dumps({"id": "w", "conversations": [
                                              {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}) + "\n")
    for name in ("first", "second"):
        tokenize_file(tmp_path / f"{name}.jsonl", tmp_path / f"{name}.arrow", tokenizer, settings)
    # a spill written before the uncut_hash column: the cause of its duplicates is unknown
    import pyarrow as pa

    from collate_assets.core.tokens.sequences import SPILL_SCHEMA_V1

    with pa.memory_map(str(tmp_path / "first.arrow")) as source:
        table = pa.ipc.open_file(source).read_all().select(["input_ids", "labels", "line"])
    with pa.OSFile(str(tmp_path / "old.arrow"), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA_V1) as writer:
        writer.write_table(table)

    sources = [MixSource(name, 1.0, [str(tmp_path / f"{name}.arrow")]) for name in ("first", "second", "old")]
    stats = build_mix(sources, tmp_path / "m", MixSettings(max_length=64))
    second, old = stats.sources["second"], stats.sources["old"]
    assert second["conversations"] == 3 and second["duplicates_dropped"] == 2
    assert second["duplicates_identical_input"] == 1 and second["duplicates_identical_after_truncation"] == 1
    assert second["duplicates_unknown_cause"] == 0
    assert old["duplicates_dropped"] == old["duplicates_unknown_cause"] == 1
    assert stats.sources["first"]["duplicates_dropped"] == 0
    manifest = json.loads((tmp_path / "m" / MANIFEST_NAME).read_text())
    assert manifest["sources"]["second"]["duplicates_identical_after_truncation"] == 1


def test_budgeted_mixes_write_the_same_bytes_every_time(assistant_spills, spills, tmp_path):
    sources = [MixSource("a", 1.0, [assistant_spills["a"]], tokens=30_000), MixSource("b", 1.7, [assistant_spills["b"]]),
               MixSource("c", 1.0, [spills["c"]], tokens=50_000, max_repeats=2.5)]
    settings = MixSettings(max_length=MAX_LENGTH, seed=5, validation_share=0.05, shard_rows=20)
    for name in ("one", "two"):
        build_mix(sources, tmp_path / name, settings)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) > 3
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.parametrize("sources, message", [
    ([("a", 1.0, {"ratio": 0.5}), ("b", 1.0, {"tokens": 10})], "every source a ratio"),
    ([("a", 2.0, {"tokens": 10})], "one of weight, ratio or tokens"),
    ([("a", 1.0, {"ratio": 1.0, "tokens": 10})], "one of weight, ratio or tokens"),
    ([("a", 2.0, {"max_repeats": 3})], "with a weight, the weight is the number of copies"),
    ([("a", 1.0, {"tokens": 10, "max_repeats": 0.5})], "max_repeats must be a finite number >= 1"),
    ([("a", 1.0, {"tokens": -1})], "tokens must be a whole number >= 0"),
])
def test_budgets_that_do_not_make_sense_are_refused(sources, message, tmp_path):
    with pytest.raises(CollateError, match=message):
        build_mix([MixSource(name, weight, ["x"], **more) for name, weight, more in sources], tmp_path / "m",
                  MixSettings(max_length=MAX_LENGTH))
    with pytest.raises(ValueError, match="budget_by"):
        MixSettings(max_length=MAX_LENGTH, budget_by="prompt")


def test_a_balanced_mix_gives_each_step_of_ranks_near_equal_attention_cost_and_the_same_rows(spills, tmp_path):
    from collate_assets.training import rank_rows

    sources = [MixSource("a", 1.0, [spills["a"]]), MixSource("b", 2.5, [spills["b"]])]
    plain = MixSettings(max_length=MAX_LENGTH, seed=3, validation_share=0.1, shard_rows=16)
    balanced = dataclasses.replace(plain, balance_ranks="4x2")
    one = build_mix(sources, tmp_path / "plain", plain)
    two = build_mix(sources, tmp_path / "balanced", balanced)
    assert "balance_ranks" not in one.settings and two.settings["balance_ranks"] == "4x2"
    # the same rows, in another order; the validation split untouched
    def rows(folder, split):
        return sorted(tuple(r["input_ids"]) for path in sorted(folder.glob(f"{split}-*.arrow")) for r in read_packed(path, "arrow"))
    assert rows(tmp_path / "plain", "train") == rows(tmp_path / "balanced", "train")
    for a, b in zip(sorted((tmp_path / "plain").glob("validation-*")), sorted((tmp_path / "balanced").glob("validation-*"))):
        assert a.read_bytes() == b.read_bytes()
    report = two.splits["train"]["balance"]
    assert report["after"]["mean"] < report["before"]["mean"] and report["after"]["mean"] < 1.1
    # read as the ranks read it (unshuffled): every full step's costs are those reported
    costs = [[sum(int(n) ** 2 for n in row["seq_lengths"])
              for row in rank_rows(tmp_path / "balanced", rank, 4, seed=0, epoch=0, shuffle=False)] for rank in range(4)]
    steps = min(len(c) for c in costs) // 2
    per_step = [max(sum(c[2 * s:2 * s + 2]) for c in costs) / (sum(sum(c[2 * s:2 * s + 2]) for c in costs) / 4)
                for s in range(steps)]
    assert steps == report["after"]["steps"]
    assert np.mean(per_step) == pytest.approx(report["after"]["mean"], abs=1e-4)  # the report is rounded
    assert "balance" not in one.splits["train"]


def test_loss_weights_are_carried_into_the_mix_and_a_mix_of_weighted_and_plain_sources_is_refused(spills, tmp_path):
    lines = (DEMO_INPUT_DIR / "demo_small.jsonl").read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        record = json.loads(line)
        messages = next(record[k] for k in ("conversations", "conversation", "messages") if k in record)
        for message in messages:
            if message.get("from") == "gpt" or message.get("role") == "assistant":
                message["weight"] = 0.5
        records.append(json.dumps(record))
    source = tmp_path / "weighted.jsonl"
    source.write_text("\n".join(records) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    spill = tmp_path / "weighted.arrow"
    tokenize_file(source, spill, tokenizer, CollateSettings(max_length=MAX_LENGTH, workers=1, labels="assistant",
                                                            loss_weights="messages"))
    stats = build_mix([MixSource("w", 1.0, [spill])], tmp_path / "mix", MixSettings(max_length=MAX_LENGTH, shard_rows=16))
    assert stats.splits["train"]["loss_weights"] is True
    seen = 0
    for path in sorted((tmp_path / "mix").glob("train-*.arrow")):
        for row in read_packed(path, "arrow", numpy=True):
            trained = row["labels"] != -100
            assert row["loss_weights"].dtype == np.float32
            assert (row["loss_weights"][trained] == 0.5).all() and (row["loss_weights"][~trained] == 0).all()
            seen += int(trained.sum())
    assert seen == stats.splits["train"]["trained_tokens"] > 0
    with pytest.raises(CollateError, match="some sources were tokenized with loss_weights .* and some without"):
        build_mix([MixSource("w", 1.0, [spill]), MixSource("a", 1.0, [spills["a"]])], tmp_path / "both",
                  MixSettings(max_length=MAX_LENGTH))


def _demo_records():
    return [json.loads(line) for line in (DEMO_INPUT_DIR / "demo.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def _messages(record):
    return next(record[k] for k in ("conversation", "conversations", "messages") if k in record)


def _text(message):
    return message.get("content", message.get("value"))


def _packed_ids(folder) -> set:
    return {tuple(seq) for path in sorted(folder.glob("*.arrow")) for row in read_packed(path, "arrow")
            for seq in _split(row)}


def _split(row):
    start = 0
    for length in row["seq_lengths"]:
        yield row["input_ids"][start:start + length]
        start += length


def test_decontamination_drops_conversations_that_share_grams_with_evaluation_files(spills, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _demo_records()
    long_answers = [(i, _text(m)) for i, r in enumerate(records) for m in _messages(r)[1:2] if len(_text(m).split()) >= 30]
    (first, answer), (second, other) = long_answers[0], long_answers[5]
    evals = tmp_path / "evals"
    evals.mkdir()
    words = answer.split()
    # reworded as an eval set would hold it: other case, punctuation and spacing, inside a longer prompt
    (evals / "qa.jsonl").write_text(json.dumps({"question": "Consider this: " + "  ".join(words[3:20]).upper() + "!!",
                                                "answer": "B"}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"prompt": [" ".join(other.split()[:25])], "id": ["x"]}), evals / "more.parquet")
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    sources = [MixSource("a", 1.0, [spills["a"]]), MixSource("b", 1.0, [spills["b"]])]
    settings = MixSettings(max_length=MAX_LENGTH, seed=1, validation_share=0.1, shard_rows=64, decontaminate=(str(evals),))
    stats = build_mix(sources, tmp_path / "mix", settings, tokenizer=tokenizer)
    report = stats.decontamination
    # (the demo set repeats some answers: they are found wherever they are, in both sources)
    assert report["n"] == 13 and report["contaminated"] == sum(s["contaminated"] for s in stats.sources.values()) >= 2
    assert report["per_source"] == {name: s["contaminated"] for name, s in stats.sources.items()}
    assert report["per_file"][str(evals / "qa.jsonl")] >= 1 and report["per_file"][str(evals / "more.parquet")] >= 1
    assert {e["line"] for e in report["examples"] if e["source"] == "a"} >= {first + 1, second + 1}
    assert all(e["spill"] == spills[e["source"]] for e in report["examples"])
    # the contaminated conversations are in neither split; the same mix without the filter has them
    plain = build_mix(sources, tmp_path / "plain", dataclasses.replace(settings, decontaminate=()))
    written, unfiltered = _packed_ids(tmp_path / "mix"), _packed_ids(tmp_path / "plain")
    for example in report["examples"]:
        assert all(ids not in written and ids in unfiltered for ids, _ in sequences_of(example["spill"])[example["line"]])
    assert "decontamination" not in json.loads((tmp_path / "plain" / MANIFEST_NAME).read_text())
    for name in ("a", "b"):
        assert plain.sources[name]["train_conversations_before_weighting"] + plain.sources[name]["validation_conversations"] \
            == stats.sources[name]["train_conversations_before_weighting"] + stats.sources[name]["validation_conversations"] \
            + stats.sources[name]["contaminated"]
    build_mix(sources, tmp_path / "again", settings, tokenizer=tokenizer)
    for name in stats.files + [MANIFEST_NAME]:
        assert (tmp_path / "mix" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    with pytest.raises(CollateError, match="give build_mix the sources' tokenizer"):
        build_mix(sources, tmp_path / "none", settings)


def test_near_duplicates_keep_the_first_of_each_cluster(spills, tmp_path):
    records = [r for r in _demo_records() if sum(len(_text(m).split()) for m in _messages(r)) >= 120][:30]
    assert len(records) == 30
    edited = []
    for record in records:
        message = max(_messages(record), key=lambda m: len(_text(m)))
        key = "content" if "content" in message else "value"
        message[key] = message[key].rsplit(" ", 1)[0] + " zebra"  # one word changed: no exact duplicate any more
        edited.append(json.dumps(record))
    source = tmp_path / "edited.jsonl"
    source.write_text("\n".join(edited) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    spill = tmp_path / "edited.arrow"
    tokenize_file(source, spill, tokenizer, CollateSettings(max_length=MAX_LENGTH, workers=1))
    settings = MixSettings(max_length=MAX_LENGTH, seed=2, shard_rows=64, near_duplicates=0.8)
    alone = build_mix([MixSource("a", 1.0, [spills["a"]])], tmp_path / "alone", settings, tokenizer=tokenizer)
    stats = build_mix([MixSource("a", 1.0, [spills["a"]]), MixSource("d", 1.0, [spill])], tmp_path / "mix", settings,
                      tokenizer=tokenizer)
    # every edited copy goes (a few are exact copies of other demo records, the demo set has near-twins), the originals stay
    exact, near = stats.sources["d"]["duplicates_dropped"], stats.sources["d"]["near_duplicates_dropped"]
    assert exact + near == 30 and near >= 25
    assert stats.sources["a"]["near_duplicates_dropped"] == alone.sources["a"]["near_duplicates_dropped"]
    report = stats.near_duplicates
    assert report["threshold"] == 0.8 and report["duplicates"] == near + alone.near_duplicates["duplicates"]
    for cluster in report["largest_clusters"]:
        assert cluster[0]["source"] == "a"  # the first (by source, then line) is kept
    assert _packed_ids(tmp_path / "alone") == _packed_ids(tmp_path / "mix")  # nothing of d is left
