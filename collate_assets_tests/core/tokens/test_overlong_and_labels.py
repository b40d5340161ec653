"""Overlong policies, label edge cases, templates that raise, and tokenizer loading errors.

Small hand-made conversations on the real shared tokenizers, with a small max_length so that the
overlong paths run.
"""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import orjson
import pyarrow as pa
import pytest

from collate_assets.core import (
    IGNORE_INDEX,
    CollateError,
    CollateSettings,
    collate_file,
    load_tokenizer,
    pack_spill,
    read_packed,
    tokenize_file,
)
from collate_assets_tests.helpers import slice_matches, split_sequences, trained_regions

MAX_LENGTH = 64
SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
# Long because of the answer: truncation keeps trained tokens.
LONG_ANSWER = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(map(str, range(90)))}]
# Long because of the question: truncation to MAX_LENGTH cuts the whole answer off.
LONG_QUESTION = [{"role": "user", "content": "Why? " * 80}, {"role": "assistant", "content": "Because."}]
CONVERSATIONS = [SHORT, LONG_ANSWER, LONG_QUESTION]  # lines 1, 2, 3

# Jinja templates written to files and given to load_tokenizer(chat_template=...).
ALTERNATING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
)
NO_END_OF_TURN_TEMPLATE = "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"


def _write_jsonl(path, conversations):
    path.write_bytes(b"".join(orjson.dumps({"messages": c}) + b"\n" for c in conversations))
    return path


def _reference_ids(tokenizer, conversation):
    return list(tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"])


def _spill_records(spill):
    with pa.memory_map(str(spill)) as source:
        return pa.ipc.open_file(source).read_all().to_pylist()


def _rejects(path):
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["line"])


@pytest.fixture
def overlong_input(tmp_path, shared_tokenizer):
    path = _write_jsonl(tmp_path / "overlong.jsonl", CONVERSATIONS)
    lengths = [len(_reference_ids(shared_tokenizer, c)) for c in CONVERSATIONS]
    assert lengths[0] <= MAX_LENGTH < min(lengths[1:]), lengths  # the fixture needs exactly these shapes
    return path


def test_truncate_keeps_prefixes_and_counts_cut_tokens(overlong_input, shared_tokenizer, tmp_path):
    stats = collate_file(overlong_input, tmp_path / "out.arrow", shared_tokenizer,
                         CollateSettings(max_length=MAX_LENGTH, overlong="truncate"))
    full = [_reference_ids(shared_tokenizer, c) for c in CONVERSATIONS]
    got = collections.Counter(tuple(ids) for row in read_packed(tmp_path / "out.arrow", "arrow")
                              for ids, _, _ in split_sequences(row))
    assert got == collections.Counter(tuple(ids[:MAX_LENGTH]) for ids in full)
    tok = stats.tokenize
    assert (tok.truncated, tok.conversations, tok.rejected) == (2, 3, 0)
    assert tok.truncated_tokens == sum(len(ids) - MAX_LENGTH for ids in full[1:])
    assert tok.tokens == tok.tokens_read - tok.truncated_tokens == stats.pack.tokens


def test_truncate_rejects_a_conversation_whose_answer_is_cut_off(overlong_input, shared_tokenizer, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    stats = tokenize_file(overlong_input, tmp_path / "spill.arrow", shared_tokenizer,
                          CollateSettings(max_length=MAX_LENGTH, labels="assistant"), rejects_path=rejects)
    [reject] = _rejects(rejects)
    assert reject["line"] == 3 and reject["reason"].startswith("no trainable token")
    assert "after truncation" in reject["reason"]
    assert (stats.truncated, stats.conversations, stats.rejected) == (1, 2, 1)
    assert [r["line"] for r in _spill_records(tmp_path / "spill.arrow")] == [1, 2]
    assert stats.accounted()


def test_drop_sends_overlong_conversations_to_rejects(overlong_input, shared_tokenizer, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    stats = collate_file(overlong_input, tmp_path / "out.arrow", shared_tokenizer,
                         CollateSettings(max_length=MAX_LENGTH, overlong="drop"), rejects_path=rejects)
    full = [_reference_ids(shared_tokenizer, c) for c in CONVERSATIONS]
    rows = list(read_packed(tmp_path / "out.arrow", "arrow"))
    assert [seq[0] for row in rows for seq in split_sequences(row)] == [full[0]]
    got = _rejects(rejects)
    assert [(r["file"], r["line"]) for r in got] == [(str(overlong_input), 2), (str(overlong_input), 3)]
    for r, ids in zip(got, full[1:]):
        assert r["reason"] == f"overlong: {len(ids)} tokens > max_length {MAX_LENGTH}, dropped"
        assert r["excerpt"]
    tok = stats.tokenize
    assert (tok.dropped, tok.conversations, tok.rejected, tok.truncated) == (2, 1, 2, 0)
    assert tok.truncated_tokens == len(full[1]) + len(full[2])
    assert tok.accounted()


@pytest.mark.parametrize("labels", ["all", "assistant"])
def test_split_makes_chunks_of_at_most_max_length(overlong_input, shared_tokenizer, tmp_path, labels):
    settings = CollateSettings(max_length=MAX_LENGTH, overlong="split", labels=labels)
    spill = tmp_path / "spill.arrow"
    stats = tokenize_file(overlong_input, spill, shared_tokenizer, settings)
    full = [_reference_ids(shared_tokenizer, c) for c in CONVERSATIONS]
    records = _spill_records(spill)
    by_line = collections.defaultdict(list)
    for record in records:
        by_line[record["line"]].append(record)
    assert sorted(by_line) == [1, 2, 3]
    for line, chunks in by_line.items():
        ids = full[line - 1]
        assert len(chunks) == -(-len(ids) // MAX_LENGTH)
        assert all(1 <= len(c["input_ids"]) <= MAX_LENGTH for c in chunks)
        assert [t for c in chunks for t in c["input_ids"]] == ids  # nothing lost, order kept
        assert all(c["labels"][0] == IGNORE_INDEX for c in chunks)
        if labels == "all":
            for c in chunks:
                assert c["labels"][1:] == c["input_ids"][1:]
    assert (stats.split, stats.conversations, stats.sequences) == (2, 3, len(records))
    assert stats.tokens == sum(map(len, full)) and stats.truncated_tokens == 0

    out = tmp_path / "out.jsonl"
    pack_stats = pack_spill(spill, out, "jsonl", settings)
    packed = [seq for row in read_packed(out, "jsonl") for seq in split_sequences(row)]
    assert collections.Counter(tuple(ids) for ids, _, _ in packed) == collections.Counter(
        tuple(r["input_ids"]) for r in records
    )
    for ids, labs, pos in packed:
        assert len(ids) <= MAX_LENGTH and labs[0] == IGNORE_INDEX and pos == list(range(len(ids)))
    assert pack_stats.sequences == len(records)


def test_error_policy_names_file_and_line(overlong_input, shared_tokenizer, tmp_path):
    spill = tmp_path / "spill.arrow"
    n = len(_reference_ids(shared_tokenizer, LONG_ANSWER))
    with pytest.raises(CollateError) as info:
        tokenize_file(overlong_input, spill, shared_tokenizer, CollateSettings(max_length=MAX_LENGTH, overlong="error"))
    assert str(info.value).startswith(f"{overlong_input}:2: conversation has {n} tokens > max_length {MAX_LENGTH}")
    assert not spill.exists() and not list(tmp_path.glob(".*.tmp"))


def test_pack_spill_refuses_a_spill_tokenized_for_a_longer_max_length(overlong_input, shared_tokenizer, tmp_path):
    spill = tmp_path / "spill.arrow"
    tokenize_file(overlong_input, spill, shared_tokenizer, CollateSettings(max_length=4096))
    with pytest.raises(CollateError, match="tokenize again with this max_length"):
        pack_spill(spill, tmp_path / "out.arrow", "arrow", CollateSettings(max_length=MAX_LENGTH))
    assert not (tmp_path / "out.arrow").exists()


# -- labels ------------------------------------------------------------------------------------------


def test_conversation_without_assistant_turn(shared_tokenizer, tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", [
        SHORT,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Anyone there?"}],
    ])
    rejects = tmp_path / "rejects.jsonl"
    stats = tokenize_file(path, tmp_path / "a.arrow", shared_tokenizer, CollateSettings(labels="assistant"),
                          rejects_path=rejects)
    [reject] = _rejects(rejects)
    assert reject["line"] == 2 and reject["reason"].startswith("no trainable token")
    assert (stats.conversations, stats.rejected) == (1, 1)
    # With labels=all the same conversation is trained on.
    stats = tokenize_file(path, tmp_path / "b.arrow", shared_tokenizer, CollateSettings(labels="all"))
    assert (stats.conversations, stats.rejected) == (2, 0)


END_OF_TURN = {"SmolLM2-135M-Instruct": "<|im_end|>", "Qwen3": "<|im_end|>", "Phi-3-mini-4k-instruct": "<|end|>"}


def test_role_headers_never_trained_when_content_starts_with_whitespace(shared_tokenizer_name, shared_tokenizer,
                                                                       tmp_path):
    """A header token may swallow the content's leading whitespace (Phi-3's `<|assistant|>` has rstrip;
    Qwen3/SmolLM2 merge newlines): that token is still the header and must not be trained."""
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": " One.  "},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "\n\nTwo."},
        {"role": "user", "content": "Three?"},
        {"role": "assistant", "content": "Three."},
    ]
    path = _write_jsonl(tmp_path / "in.jsonl", [conversation])
    spill = tmp_path / "spill.arrow"
    stats = tokenize_file(path, spill, shared_tokenizer, CollateSettings(labels="assistant"))
    assert (stats.conversations, stats.rejected) == (1, 0)
    [record] = _spill_records(spill)
    text = shared_tokenizer.apply_chat_template(conversation, tokenize=False)
    encoding = shared_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    assert record["input_ids"] == encoding.ids
    got = [text[s:e] for s, e in trained_regions(encoding.offsets, record["labels"])]
    want = [m["content"] + END_OF_TURN[shared_tokenizer_name] for m in conversation if m["role"] == "assistant"]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert slice_matches(g, w), (g, w)


def _template_file(tmp_path, text):
    path = tmp_path / "template.jinja"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("labels", ["all", "assistant"])
def test_template_error_rejects_only_that_conversation(tokenizer_paths, tmp_path, labels):
    tokenizer = load_tokenizer(tokenizer_paths["SmolLM2-135M-Instruct"],
                               chat_template=_template_file(tmp_path, ALTERNATING_TEMPLATE))
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    path = _write_jsonl(tmp_path / "in.jsonl", [SHORT, bad, SHORT, LONG_ANSWER])
    rejects = tmp_path / "rejects.jsonl"
    stats = collate_file(path, tmp_path / "out.arrow", tokenizer, CollateSettings(labels=labels),
                         rejects_path=rejects)
    [reject] = _rejects(rejects)
    assert reject["line"] == 2
    assert reject["reason"] == (
        "chat template error: TemplateError: Conversation roles must alternate user/assistant/user/assistant/..."
    )
    assert (stats.tokenize.conversations, stats.tokenize.rejected) == (3, 1)
    expected = sorted(tuple(_reference_ids(tokenizer, c)) for c in (SHORT, SHORT, LONG_ANSWER))
    rows = list(read_packed(tmp_path / "out.arrow", "arrow"))
    assert sorted(tuple(seq[0]) for row in rows for seq in split_sequences(row)) == expected


def test_assistant_labels_need_an_end_of_turn(tokenizer_paths, tmp_path):
    tokenizer = load_tokenizer(tokenizer_paths["SmolLM2-135M-Instruct"],
                               chat_template=_template_file(tmp_path, NO_END_OF_TURN_TEMPLATE))
    path = _write_jsonl(tmp_path / "in.jsonl", [SHORT])
    with pytest.raises(CollateError, match="writes no end-of-turn text after an assistant turn"):
        tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(labels="assistant"))
    # labels=all does not need one
    stats = tokenize_file(path, tmp_path / "spill.arrow", tokenizer, CollateSettings(labels="all"))
    assert stats.conversations == 1


# -- load_tokenizer --------------------------------------------------------------------------------


def test_load_tokenizer_missing_folder(tmp_path):
    with pytest.raises(CollateError, match="tokenizer folder not found") as info:
        load_tokenizer(tmp_path / "no-such-tokenizer")
    assert "no-such-tokenizer" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.fixture
def tokenizer_without_template(tokenizer_paths, tmp_path):
    folder = tmp_path / "bare-tokenizer"
    folder.mkdir()
    shutil.copyfile(tokenizer_paths["SmolLM2-135M-Instruct"] / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def test_load_tokenizer_without_chat_template(tokenizer_without_template):
    with pytest.raises(CollateError, match="has no chat template; give one with --chat-template FILE"):
        load_tokenizer(tokenizer_without_template)


def test_load_tokenizer_with_a_chat_template_file(tokenizer_without_template, tmp_path):
    template = _template_file(tmp_path, ALTERNATING_TEMPLATE)
    tokenizer = load_tokenizer(tokenizer_without_template, chat_template=template)
    assert tokenizer.chat_template == ALTERNATING_TEMPLATE
    assert tokenizer.apply_chat_template(SHORT, tokenize=False) == "<|im_start|>user\nHi<|im_end|>\n" \
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    with pytest.raises(CollateError, match="cannot read chat template"):
        load_tokenizer(tokenizer_without_template, chat_template=tmp_path / "missing.jinja")


def test_labels_are_int32_and_aligned_in_spill(overlong_input, shared_tokenizer, tmp_path):
    spill = tmp_path / "spill.arrow"
    tokenize_file(overlong_input, spill, shared_tokenizer, CollateSettings(labels="assistant", max_length=4096))
    with pa.memory_map(str(spill)) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("labels").type == pa.list_(pa.int32())
    for ids, labels in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist()):
        ids, labels = np.asarray(ids), np.asarray(labels)
        assert len(ids) == len(labels) and labels[0] == IGNORE_INDEX
        assert ((labels == IGNORE_INDEX) | (labels == ids)).all()


# Three assistant turns; the middle answer alone is longer than MAX_LENGTH, the others fit with room to spare.
TURNS = [
    {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(map(str, range(70)))},
    {"role": "user", "content": "And a fruit?"}, {"role": "assistant", "content": "A pear, ripe and sweet."},
    {"role": "user", "content": "A city? " * 6}, {"role": "assistant", "content": "Lisbon."},
]


def test_turns_cut_at_assistant_turn_ends_and_train_each_turn_once(shared_tokenizer, tmp_path):
    source = _write_jsonl(tmp_path / "turns.jsonl", [TURNS, SHORT, [LONG_ANSWER[0], {"role": "assistant", "content": "9 " * 90}]])
    whole = tokenize_file(source, tmp_path / "whole.arrow", shared_tokenizer,
                          CollateSettings(max_length=4096, labels="assistant"))
    reference = {r["line"]: r for r in _spill_records(tmp_path / "whole.arrow")}
    rejects = tmp_path / "rejects.jsonl"
    stats = tokenize_file(source, tmp_path / "spill.arrow", shared_tokenizer,
                          CollateSettings(max_length=MAX_LENGTH, labels="assistant", overlong="turns"), rejects_path=rejects)
    windows = collections.defaultdict(list)
    for record in _spill_records(tmp_path / "spill.arrow"):
        windows[record["line"]].append(record)

    # line 3: its one answer is longer than max_length: nothing to train, rejected with the reason
    [reject] = _rejects(rejects)
    assert reject["line"] == 3 and "every assistant turn is longer than max_length" in reject["reason"]
    assert sorted(windows) == [1, 2] and stats.rejected == 1 and stats.accounted()
    # line 2 fits: written whole, as with any policy
    assert [w["input_ids"] for w in windows[2]] == [reference[2]["input_ids"]]

    ids, labels = reference[1]["input_ids"], np.asarray(reference[1]["labels"])
    trained = labels != IGNORE_INDEX
    edges = np.flatnonzero(np.diff(np.concatenate(([0], trained.astype(np.int8), [0]))))
    spans = edges.reshape(-1, 2).tolist()
    assert len(spans) == 4 and len(ids) > MAX_LENGTH  # one trained span per assistant turn
    too_long = [(a, b) for a, b in spans if b - a + 1 > MAX_LENGTH]
    assert len(too_long) == 1
    times_trained = np.zeros(len(ids), dtype=int)
    for window in windows[1]:
        n = len(window["input_ids"])
        assert n <= MAX_LENGTH and window["labels"][0] == IGNORE_INDEX
        ends = [b for _, b in spans if ids[max(0, b - n):b] == window["input_ids"]]
        assert len(ends) == 1, "a window ends where an assistant turn ends"
        end = ends[0]
        assert n == min(MAX_LENGTH, end), "as much earlier context as fits"
        assert window["labels"][-1] != IGNORE_INDEX, "the turn's end is trained"
        got = np.asarray(window["labels"])
        here = got != IGNORE_INDEX
        assert (got[here] == labels[end - n:end][here]).all()  # trained labels are the turn's own
        times_trained[end - n:end] += here
    fits = np.zeros(len(ids), dtype=bool)
    for a, b in spans:
        fits[a:b] = b - a + 1 <= MAX_LENGTH
    assert (times_trained[fits & trained] == 1).all(), "every turn that fits is trained exactly once"
    assert (times_trained[~fits] == 0).all() and (times_trained[~trained] == 0).all()
    assert (stats.turn_split, stats.turns_not_fit) == (1, 2)  # line 1's long turn and line 3's
    assert stats.trained_tokens == int(trained[fits].sum()) + int((np.asarray(reference[2]["labels"]) != IGNORE_INDEX).sum())


def test_turns_need_assistant_labels():
    with pytest.raises(ValueError, match="needs labels=assistant"):
        CollateSettings(overlong="turns")
    assert CollateSettings(overlong="turns", labels="assistant").overlong == "turns"


@pytest.mark.parametrize("overlong", ["split", "turns"])
def test_pad_to_multiple_of_pads_each_sequence_untrained_and_changes_nothing_else(shared_tokenizer, tmp_path, overlong):
    source = _write_jsonl(tmp_path / "in.jsonl", [TURNS, SHORT, LONG_ANSWER])
    plain = CollateSettings(max_length=MAX_LENGTH, labels="assistant", overlong=overlong)
    padded = CollateSettings(max_length=MAX_LENGTH, labels="assistant", overlong=overlong, pad_to_multiple_of=16)
    assert "pad_to_multiple_of" not in plain.output_dict()  # off: the fingerprint of before, nothing goes stale
    assert plain.fingerprint() != padded.fingerprint()
    a = tokenize_file(source, tmp_path / "a.arrow", shared_tokenizer, plain)
    b = tokenize_file(source, tmp_path / "b.arrow", shared_tokenizer, padded)
    pad = shared_tokenizer.pad_token_id if shared_tokenizer.pad_token_id is not None else shared_tokenizer.eos_token_id
    before, after = _spill_records(tmp_path / "a.arrow"), _spill_records(tmp_path / "b.arrow")
    assert [r["line"] for r in before] == [r["line"] for r in after]
    for x, y in zip(before, after):
        n = len(x["input_ids"])
        assert len(y["input_ids"]) % 16 == 0 and n <= len(y["input_ids"]) < n + 16 and len(y["input_ids"]) <= MAX_LENGTH
        assert y["input_ids"][:n] == x["input_ids"] and y["labels"][:n] == x["labels"]
        assert set(y["input_ids"][n:]) <= {pad} and set(y["labels"][n:]) <= {IGNORE_INDEX}
    assert b.padding_tokens == b.tokens - a.tokens > 0 and b.trained_tokens == a.trained_tokens
    assert (b.conversations, b.sequences) == (a.conversations, a.sequences)
    out = tmp_path / "out.arrow"
    pack_spill(tmp_path / "b.arrow", out, "arrow", padded)
    for row in read_packed(out, "arrow"):
        assert len(row["input_ids"]) % 16 == 0 and all(n % 16 == 0 for n in row["seq_lengths"])


def test_pad_to_multiple_of_must_divide_max_length():
    with pytest.raises(ValueError, match="must divide max_length"):
        CollateSettings(max_length=100, pad_to_multiple_of=16)


def test_uncut_hash_is_zero_for_whole_sequences_and_shared_by_the_pieces_of_a_cut_one(overlong_input, shared_tokenizer, tmp_path):
    spill = tmp_path / "spill.arrow"
    tokenize_file(overlong_input, spill, shared_tokenizer, CollateSettings(max_length=MAX_LENGTH, overlong="split"))
    by_line = collections.defaultdict(set)
    for record in _spill_records(spill):
        by_line[record["line"]].add(record["uncut_hash"])
    assert by_line[1] == {0}  # SHORT fits: written whole
    assert len(by_line[2]) == len(by_line[3]) == 1 and 0 not in by_line[2] | by_line[3]  # one hash per cut sequence
    assert by_line[2] != by_line[3]
