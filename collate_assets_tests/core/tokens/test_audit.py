"""The supervision audit (core/tokens/audit.py): each figure counted from real tokenizers on small files, merged
across chunks and worker processes, turned into threshold failures, and summed for a mix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from collate_assets.core import IGNORE_INDEX, CollateSettings, tokenize_file
from collate_assets.core.tokens.audit import OUTSIDE_SAMPLE, SupervisionAudit, supervision_problems, thresholds_set
from collate_assets.core.tokens.chat import ChatEncoder, Mask, Rendered
from collate_assets.core.read.formats import Conversation
from collate_assets.core.tokens.tokenize import ChunkTokenizer

from collate_assets_tests.helpers import REPO_ROOT


def _write(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    return path


def _chat(i: int, turns: int = 2, system: bool = False) -> list[dict]:
    out = [{"role": "system", "content": "Answer briefly."}] if system else []
    for t in range(turns):
        out += [{"role": "user", "content": f"Question {i}.{t}?"},
                {"role": "assistant", "content": f"Answer {i}.{t}: " + "words " * (i % 4 + 1)}]
    return out


def _spill_labels(path) -> list[np.ndarray]:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return [np.asarray(x, dtype=np.int64) for x in table.column("labels").to_pylist()]


def _run(tmp_path, tokenizer, conversations, name="in.jsonl", **settings):
    source = _write(tmp_path / name, conversations)
    settings.setdefault("workers", 1)
    stats = tokenize_file(source, tmp_path / "spill.arrow", tokenizer, CollateSettings(**settings),
                          rejects_path=tmp_path / "rejects.jsonl")
    return stats, SupervisionAudit.from_dict(stats.supervision)


# -- the object ---------------------------------------------------------------------------------------


def test_audits_add_and_round_trip_through_a_dict():
    a = SupervisionAudit(tokens=10, trained_tokens=4, turn_ends_trained=2, turn_ends_untrained=1, no_trained_token=1)
    a.special_tokens.update({"<|im_end|>": 2})
    b = SupervisionAudit(tokens=30, trained_tokens=6, turn_ends_missing=1, outside_sampled_conversations=2,
                         outside_sampled_trained=10, outside_sampled_outside=4)
    b.special_tokens.update({"<|im_end|>": 1, "<|im_start|>": 5})
    total = SupervisionAudit.merged([a.to_dict(), b, None])
    assert (total.tokens, total.trained_tokens, total.trained_share) == (40, 10, 0.25)
    assert total.special_tokens == {"<|im_end|>": 3, "<|im_start|>": 5}
    assert total.untrained_turn_end_share == pytest.approx(2 / 4)  # untrained + missing over all seen
    assert total.outside_assistant_share == pytest.approx(0.4)
    again = SupervisionAudit.from_dict(json.loads(json.dumps(total.to_dict())))
    assert again == total
    assert SupervisionAudit().untrained_turn_end_share is None and SupervisionAudit().outside_assistant_share is None


# -- turn ends, from a Rendered built by hand ---------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3(load_shared_tokenizer):
    return load_shared_tokenizer("Qwen3")


TEXT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
EOT = (TEXT.rindex("<|im_end|>"), TEXT.rindex("<|im_end|>") + len("<|im_end|>"))
ANSWER = (TEXT.index("Hello"), EOT[1])


def _turns(tokenizer, rendered: Rendered, **settings) -> SupervisionAudit | None:
    encoder = ChatEncoder(tokenizer, "assistant")
    chunker = ChunkTokenizer(encoder, CollateSettings(labels="assistant", **settings), "x")
    encs = encoder.encode_texts(rendered.texts)
    sequences = [encoder.labels_for(e, m) for e, m in zip(encs, rendered.masks)]
    conversation = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    return chunker._audit_turns(rendered, conversation, sequences, encs, True, SupervisionAudit())


def test_a_turn_end_is_trained_only_when_every_token_of_it_is(qwen3):
    trained = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[EOT]]))
    assert (trained.turn_ends_trained, trained.turn_ends_untrained, trained.turn_ends_missing) == (1, 0, 0)
    # (a sequence written whole is not looked at token by token: the engine's mask of a turn runs through
    # its end, which test_template_families checks for every family; a cut one is, see below)
    no_text = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[None]]))
    assert (no_text.turn_ends_trained, no_text.turn_ends_missing) == (0, 1)
    # no mask (labels=all): trained from the second token on, without offsets
    plain = _turns(qwen3, Rendered([TEXT], [None], turn_ends=[[EOT]]))
    assert plain.turn_ends_trained == 1
    # the engine gives no turn ends, and nothing is cut: nothing to count
    assert _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])])) is None


def test_a_truncation_that_cuts_the_last_turn_end_counts_it_untrained_and_cut(qwen3):
    n = len(qwen3.backend_tokenizer.encode(TEXT, add_special_tokens=False).ids)
    cut = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[EOT]]), max_length=n - 2)
    assert (cut.turn_ends_trained, cut.turn_ends_untrained, cut.truncated_before_end_of_turn) == (0, 1, 1)
    kept = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[EOT]]), max_length=n - 1)  # only "\n" cut
    assert (kept.turn_ends_trained, kept.truncated_before_end_of_turn) == (1, 0)
    # split: nothing is cut, but the first label of each chunk is not trained
    split = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[EOT]]), max_length=n - 3, overlong="split")
    assert (split.turn_ends_trained, split.truncated_before_end_of_turn) == (1, 0)
    starts_a_chunk = _turns(qwen3, Rendered([TEXT], [Mask([ANSWER])], turn_ends=[[EOT]]), max_length=n - 2, overlong="split")
    assert (starts_a_chunk.turn_ends_untrained, starts_a_chunk.truncated_before_end_of_turn) == (1, 0)


# -- the figures of a file ------------------------------------------------------------------------------


def test_trained_share_is_trained_over_written_and_assistant_trains_less(tmp_path, qwen3):
    chats = [_chat(i, system=True) for i in range(12)]
    all_stats, all_audit = _run(tmp_path, qwen3, chats, labels="all")
    asst_stats, asst_audit = _run(tmp_path, qwen3, chats, labels="assistant")
    assert all_audit.trained_share == pytest.approx(all_stats.trained_tokens / all_stats.tokens)
    assert (all_audit.tokens, all_audit.trained_tokens) == (all_stats.tokens, all_stats.trained_tokens)
    written = _spill_labels(tmp_path / "spill.arrow")
    trained = sum(int((labels != IGNORE_INDEX).sum()) for labels in written)
    assert asst_audit.trained_tokens == trained and 0 < asst_audit.trained_share < 0.6 < all_audit.trained_share


def test_qwen3_assistant_labels_train_every_assistant_turn_end(tmp_path, qwen3):
    """End to end with the engine's own turn ends (Rendered.turn_ends, filled by chat.py): every assistant
    turn's <|im_end|> is trained under labels=assistant. While chat.py leaves turn_ends empty this fails."""
    chats = [_chat(i, turns=1 + i % 3) for i in range(10)]
    turns = sum(1 + i % 3 for i in range(10))
    stats, audit = _run(tmp_path, qwen3, chats, labels="assistant")
    assert (audit.turn_ends_trained, audit.turn_ends_untrained, audit.turn_ends_missing) == (turns, 0, 0)
    assert audit.untrained_turn_end_share == 0.0
    im_end = qwen3.convert_tokens_to_ids("<|im_end|>")
    assert sum(int((labels == im_end).sum()) for labels in _spill_labels(tmp_path / "spill.arrow")) == turns


def test_special_tokens_trained_are_counted_by_text(tmp_path, qwen3):
    chats = [_chat(i, turns=2) for i in range(5)]
    _, asst = _run(tmp_path, qwen3, chats, labels="assistant")
    assert dict(asst.special_tokens) == {"<|im_end|>": 10}  # one per assistant turn, headers untrained
    _, every = _run(tmp_path, qwen3, chats, labels="all")
    # every turn's <|im_start|> but each sequence's first token, and every <|im_end|>
    assert dict(every.special_tokens) == {"<|im_start|>": 5 * 4 - 5, "<|im_end|>": 5 * 4}


def test_conversations_with_nothing_trained_are_counted(tmp_path, qwen3):
    chats = [_chat(0), [{"role": "user", "content": "no answer"}], _chat(1)]
    stats, audit = _run(tmp_path, qwen3, chats, labels="assistant")
    assert audit.no_trained_token == 1 == stats.rejected
    assert "no trainable token (no assistant message)" in stats.reject_reasons


@pytest.mark.parametrize("labels", ["all", "assistant"])
def test_truncated_turns_are_counted_and_dropped_with_a_reason_on_request(tmp_path, qwen3, labels):
    chats = [_chat(i) for i in range(6)] + [_chat(9, turns=30)]  # the last one is far over 128 tokens
    kept, audit = _run(tmp_path, qwen3, chats, labels=labels, max_length=128)
    assert audit.truncated_before_end_of_turn == 1 and audit.truncated_turns_dropped == 0
    assert kept.truncated == 1 and kept.conversations == 7
    dropped, audit = _run(tmp_path, qwen3, chats, labels=labels, max_length=128, truncated_turns="drop")
    assert (audit.truncated_before_end_of_turn, audit.truncated_turns_dropped) == (1, 1)
    assert (dropped.conversations, dropped.rejected, dropped.truncated) == (6, 1, 0)
    assert dropped.accounted() and dropped.tokens_read == dropped.tokens + dropped.truncated_tokens
    [reject] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 7 and "truncated_turns=drop" in reject["reason"]


def test_outside_assistant_share_is_sampled_under_labels_all(tmp_path, qwen3):
    chats = [_chat(i, system=True) for i in range(20)]
    _, audit = _run(tmp_path, qwen3, chats, labels="all")
    assert OUTSIDE_SAMPLE == 8 and audit.outside_sampled_conversations == 8  # the first 8 of the (one) chunk
    # independently: tokens trained under all minus under assistant, on the same 8 conversations
    sample = tmp_path / "sample"
    sample.mkdir()
    all_stats, _ = _run(sample, qwen3, chats[:8], labels="all")
    asst_stats, none = _run(sample, qwen3, chats[:8], labels="assistant")
    assert audit.outside_sampled_trained == all_stats.trained_tokens
    assert audit.outside_sampled_outside == all_stats.trained_tokens - asst_stats.trained_tokens
    assert 0.3 < audit.outside_assistant_share < 0.9
    assert none.outside_assistant_share is None  # labels=assistant: not sampled


def test_the_audit_is_the_same_with_worker_processes(tmp_path, qwen3):
    chats = [_chat(i, turns=1 + i % 3, system=i % 2 == 0) for i in range(60)]
    source = _write(tmp_path / "in.jsonl", chats)
    audits = []
    for workers in (1, 2):
        stats = tokenize_file(source, tmp_path / f"spill{workers}.arrow", qwen3,
                              CollateSettings(labels="all", max_length=64, workers=workers), chunk_lines=20)
        assert stats.workers == workers
        audits.append(stats.supervision)
    assert audits[0] == audits[1]
    assert audits[0]["outside_sampled_conversations"] == 8 * 3  # 8 of each of the 3 chunks
    assert audits[0]["truncated_before_end_of_turn"] > 0


# -- thresholds ---------------------------------------------------------------------------------------


def test_thresholds_are_settings_that_validate_and_fail_with_the_figure():
    assert not thresholds_set(CollateSettings())
    with pytest.raises(ValueError, match="min_trained_share"):
        CollateSettings(min_trained_share=1.5)
    with pytest.raises(ValueError, match="truncated_turns"):
        CollateSettings(truncated_turns="cut")
    settings = CollateSettings.from_env({"COLLATE_MIN_TRAINED_SHARE": "0.5", "COLLATE_TRUNCATED_TURNS": "drop",
                                         "COLLATE_MAX_UNTRAINED_TURN_ENDS": "0.1"})
    assert (settings.min_trained_share, settings.truncated_turns, settings.max_untrained_turn_ends) == (0.5, "drop", 0.1)
    assert "truncated_turns" in settings.output_dict() and "min_trained_share" not in settings.output_dict()
    audit = SupervisionAudit(tokens=100, trained_tokens=30, turn_ends_trained=8, turn_ends_untrained=2)
    results = {name: (passed, message) for name, passed, message in supervision_problems(audit, settings)}
    assert results["min_trained_share"] == (False, "30.00% of tokens written are trained, below min_trained_share 50.00%")
    assert not results["max_untrained_turn_ends"][0] and "(2 of 10)" in results["max_untrained_turn_ends"][1]
    assert all(passed for _, passed, _ in supervision_problems(audit, CollateSettings()))


def test_the_command_fails_a_file_under_a_threshold_and_prints_the_audit(tmp_path, tokenizer_paths):
    (tmp_path / "in").mkdir()
    source = _write(tmp_path / "in" / "chats.jsonl", [_chat(i) for i in range(5)])
    base = [sys.executable, "-m", "collate_assets.cli", "-i", str(source), "-t", str(tokenizer_paths["Qwen3"]),
            "--no-dagster", "-q", "--labels", "assistant"]
    ok = subprocess.run([*base, "-o", str(tmp_path / "ok"), "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0, ok.stderr
    [file_stats] = json.loads(ok.stdout)
    assert file_stats["tokenize"]["supervision"]["trained_share"] > 0
    text = subprocess.run([*base, "-o", str(tmp_path / "text")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert "supervision: " in text.stdout and "special tokens trained: <|im_end|> ×10" in text.stdout
    bad = subprocess.run([*base, "-o", str(tmp_path / "bad"), "--min-trained-share", "0.9"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 1
    assert "below min_trained_share 90.00%" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "chats.arrow").exists()  # not packed


# -- a mix -------------------------------------------------------------------------------------------


def test_a_mix_reports_its_trained_share_and_the_merged_audit_of_its_sources(tmp_path, qwen3):
    from collate_assets.core.pack.mix import MixSettings, MixSource, build_mix, read_manifest

    sources = []
    for name, labels in (("a", "all"), ("b", "assistant")):
        folder = tmp_path / name
        folder.mkdir()
        stats = tokenize_file(_write(folder / "in.jsonl", [_chat(i, turns=2) for i in range(8)]), folder / "spill.arrow",
                              qwen3, CollateSettings(labels=labels, workers=1))
        sources.append(MixSource(name, 1.0, [folder / "spill.arrow"], supervision=stats.supervision))
    stats = build_mix(sources, tmp_path / "mix", MixSettings(max_length=4096))
    manifest = read_manifest(tmp_path / "mix")
    merged = SupervisionAudit.from_dict(manifest["supervision"])
    a, b = (SupervisionAudit.from_dict(s.supervision) for s in sources)
    assert merged.trained_tokens == a.trained_tokens + b.trained_tokens and merged.tokens == a.tokens + b.tokens
    # labels=all counts the turn ends of its plain conversations too (written whole: all trained)
    assert merged.turn_ends_trained == a.turn_ends_trained + b.turn_ends_trained and a.turn_ends_trained == b.turn_ends_trained == 16
    assert manifest["sources"]["b"]["supervision"]["turn_ends_trained"] == 16
    train = stats.splits["train"]
    assert train["trained_share"] == pytest.approx(train["trained_tokens"] / train["tokens"])
    assert train["trained_tokens"] == merged.trained_tokens  # weights 1, no duplicate: what the sources trained


def test_labels_all_finds_the_turn_ends_of_a_cut_plain_conversation_in_its_text(tmp_path, qwen3):
    """A conversation rendered without a mask has no per-turn layout: written whole, each assistant turn's
    end is trained; cut, its turn ends are found in the text and the cut one counts untrained."""
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "Tell me a long story."},
            {"role": "assistant", "content": "Once upon a time " + "there was a story " * 40 + "The end."}]
    path = _write(tmp_path / "in.jsonl", [chat])
    whole = tokenize_file(path, tmp_path / "a.arrow", qwen3, CollateSettings(labels="all", workers=1)).supervision
    assert (whole["turn_ends_trained"], whole["turn_ends_untrained"], whole["truncated_before_end_of_turn"]) == (2, 0, 0)
    cut = tokenize_file(path, tmp_path / "b.arrow", qwen3, CollateSettings(labels="all", workers=1, max_length=64)).supervision
    assert (cut["turn_ends_trained"], cut["turn_ends_untrained"], cut["truncated_before_end_of_turn"]) == (1, 1, 1)
