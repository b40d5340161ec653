"""Loss weights (the `loss_weights` setting) from message weights to the loss `Trainer` back-propagates.

Real conversations (the shared fastchat data, multi-turn, assistant-only labels), each assistant message
given a weight in turn (0.5, 2, 1, 0.25: the LLaMA-Factory / axolotl `weight` field), go through the
engine into packed rows of at most 256 tokens, once with `loss_weights=messages` and once with
`conversation-mean`. A tiny randomly initialised Llama (float32, CPU) scores every conversation alone.

- `messages`: each trained token weighs its message's weight (found independently here: the k-th trained
  span of a conversation is its k-th assistant turn), and a conversation's Σ w·ℓ in a packed, flattened
  batch is its Σ w·ℓ alone;
- `conversation-mean`: `LossWeightsTrainer` (batch 4, gradient accumulation 2, rows in order) back-propagates,
  per optimizer step, exactly the mean over the step's conversations of each conversation's own weighted
  mean loss alone: what unpacked per-sample training computes, whatever the packing;
- the other formats carry the same weights; `off` rejects a weight other than 0 or 1 with the reason.
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")  # CI installs torch ([test] extra)
import numpy as np  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from collate_assets.core import CollateSettings, collate_file, read_packed  # noqa: E402
from collate_assets.core.tokens.sequences import trained_spans  # noqa: E402
from collate_assets.training import LossWeightsTrainer, PackedRowsCollator, collate_packed_rows, weighted_loss  # noqa: E402
from collate_assets_tests.helpers import SHARED_DATA_FILES, SHARED_DIR, load_shared_tokenizer, read_json_array, require  # noqa: E402
from collate_assets_tests.tiny_models import next_token_nll, tiny_llama  # noqa: E402

CONVERSATIONS = 32
MAX_LENGTH = 256
BATCH, ACCUMULATION = 4, 2
WEIGHTS = (0.5, 2.0, 1.0, 0.25)  # of the 1st, 2nd, ... assistant message of a conversation, in turn
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return load_shared_tokenizer("SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    records = read_json_array(require(SHARED_DIR / SHARED_DATA_FILES["fastchat"], "shared fastchat data"))[:CONVERSATIONS]
    for record in records:
        turns = [m for m in record["conversations"] if m["from"] in ("gpt", "assistant")]
        for k, message in enumerate(turns):
            message["weight"] = WEIGHTS[k % len(WEIGHTS)]
    folder = tmp_path_factory.mktemp("weights-in")
    path = folder / "weighted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def packed(source, tokenizer, tmp_path_factory, mode: str, fmt: str = "arrow") -> list[dict]:
    out = tmp_path_factory.mktemp(f"weights-{mode}") / f"rows.{fmt}"
    stats = collate_file(source, out, tokenizer, CollateSettings(max_length=MAX_LENGTH, labels="assistant", loss_weights=mode), fmt)
    assert stats.tokenize.conversations == CONVERSATIONS and stats.tokenize.rejected == 0
    return list(read_packed(out, fmt, numpy=True))


@pytest.fixture(scope="module")
def rows_messages(source, tokenizer, tmp_path_factory):
    return packed(source, tokenizer, tmp_path_factory, "messages")


@pytest.fixture(scope="module")
def rows_mean(source, tokenizer, tmp_path_factory):
    return packed(source, tokenizer, tmp_path_factory, "conversation-mean")


def conversations(row):
    """(ids, labels, weights) of each conversation of a packed row."""
    start = 0
    for length in row["seq_lengths"]:
        end = start + int(length)
        yield row["input_ids"][start:end], row["labels"][start:end], row["loss_weights"][start:end]
        start = end


@pytest.fixture(scope="module")
def alone(rows_messages, tokenizer):
    """Per conversation, in row order: its next-token losses alone, its labels and its message weights."""
    model = tiny_llama(len(tokenizer)).eval()
    out = []
    with torch.no_grad():
        for row in rows_messages:
            for ids, labels, weights in conversations(row):
                seq = torch.from_numpy(ids.astype(np.int64))
                logits = model(input_ids=seq[None], use_cache=False).logits[0]
                out.append((next_token_nll(logits, seq), labels, weights))
    return out


def test_each_trained_token_weighs_its_messages_weight(rows_messages):
    seen = 0
    for row in rows_messages:
        for _, labels, weights in conversations(row):
            spans = trained_spans(labels)
            assert len(spans), "every conversation trains its assistant turns"
            expected = np.zeros(len(labels), dtype=np.float32)
            for k, (a, b) in enumerate(spans):
                expected[a:b] = WEIGHTS[k % len(WEIGHTS)]
            assert np.array_equal(weights, expected)
            seen += len(spans)
    assert seen > CONVERSATIONS  # multi-turn: several weights per conversation


def test_a_conversations_weighted_loss_in_a_packed_batch_is_its_weighted_loss_alone(rows_messages, alone, tokenizer):
    model = tiny_llama(len(tokenizer)).eval()
    batch = collate_packed_rows(rows_messages[:BATCH])
    assert batch["loss_weights"].shape == batch["labels"].shape
    with torch.no_grad():
        nll = next_token_nll(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0],
                             batch["input_ids"][0])
    weights = batch["loss_weights"][0, 1:]
    start, k = 0, 0
    for row in rows_messages[:BATCH]:
        for length in row["seq_lengths"]:
            length = int(length)
            got = (nll[start:start + length - 1] * weights[start:start + length - 1]).sum().item()
            own_nll, _, own_weights = alone[k]
            want = (own_nll * torch.tensor(own_weights[1:])).sum().item()
            assert got == pytest.approx(want, rel=REL_TOL) and want > 0
            start, k = start + length, k + 1
    # the batch loss: Σ w·ℓ / Σ w over the batch, the boundaries between conversations weighing nothing
    loss = weighted_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits,
                         batch["labels"], batch["loss_weights"]).item()
    assert loss == pytest.approx((nll * weights).sum().item() / weights.sum().item(), rel=REL_TOL)


class Recorded(LossWeightsTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.records.append((self.state.global_step, loss.item()))
        return loss


def test_trainer_with_conversation_mean_weights_trains_the_mean_of_each_conversations_mean(rows_mean, rows_messages, alone,
                                                                                           tokenizer, tmp_path):
    from datasets import Dataset

    # the same rows, ids and labels; each conversation's weights are its message weights over their sum
    assert len(rows_mean) == len(rows_messages)
    for a, b in zip(rows_mean, rows_messages):
        assert np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
        for (_, _, mean_w), (_, _, msg_w) in zip(conversations(a), conversations(b)):
            assert mean_w.sum() == pytest.approx(1.0, rel=1e-5)
            assert np.allclose(mean_w, msg_w / msg_w.sum(), rtol=1e-6)
    dataset = Dataset.from_list([{k: v.tolist() for k, v in row.items()} for row in rows_mean])
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
        num_train_epochs=1, learning_rate=0.0, report_to="none", save_strategy="no", logging_strategy="no",
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0, train_sampling_strategy="sequential",
    )  # remove_unused_columns stays on: the trainer keeps loss_weights (and drops seq_lengths)
    trainer = Recorded(model=tiny_llama(len(tokenizer)), args=args, train_dataset=dataset, data_collator=PackedRowsCollator())
    trainer.records = []
    trainer.train()
    steps = math.ceil(math.ceil(len(rows_mean) / BATCH) / ACCUMULATION)
    assert trainer.state.global_step == steps
    # per optimizer step: the rows it read, in order, and the mean over their conversations of each one's mean alone
    rows_per_step = BATCH * ACCUMULATION
    first = 0
    for step in range(steps):
        conversations_here = sum(len(r["seq_lengths"]) for r in rows_mean[step * rows_per_step:(step + 1) * rows_per_step])
        means = []
        for nll, _, weights in alone[first:first + conversations_here]:
            w = torch.tensor(weights[1:])
            means.append(((nll * w).sum() / w.sum()).item())
        first += conversations_here
        got = sum(loss for at, loss in trainer.records if at == step)
        assert got == pytest.approx(sum(means) / len(means), rel=REL_TOL)
    assert first == CONVERSATIONS


@pytest.mark.parametrize("fmt", ["parquet", "msgpack", "jsonl"])
def test_every_format_carries_the_same_weights(rows_messages, source, tokenizer, tmp_path_factory, fmt):
    rows = packed(source, tokenizer, tmp_path_factory, "messages", fmt)
    assert len(rows) == len(rows_messages)
    for a, b in zip(rows, rows_messages):
        assert a["loss_weights"].dtype == np.float32 and np.array_equal(a["loss_weights"], b["loss_weights"])


def test_without_the_setting_a_fractional_weight_is_rejected_with_the_reason(source, tokenizer, tmp_path):
    lines = source.read_text(encoding="utf-8").splitlines()
    plain = json.loads(lines[0])
    for message in plain["conversations"]:
        message.pop("weight", None)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines + [json.dumps(plain)]) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    stats = collate_file(mixed, tmp_path / "out.arrow", tokenizer, CollateSettings(max_length=MAX_LENGTH, labels="assistant"),
                         "arrow", rejects_path=rejects)
    assert (stats.tokenize.rejected, stats.tokenize.conversations) == (CONVERSATIONS, 1) and stats.tokenize.accounted()
    reasons = [json.loads(line)["reason"] for line in rejects.read_text().splitlines()]
    assert len(reasons) == CONVERSATIONS
    assert all(r.startswith("a message has loss weight 0.5: only 0 (not trained) and 1 (trained) without --loss-weights")
               for r in reasons)
    assert "loss_weights" not in next(iter(read_packed(tmp_path / "out.arrow", "arrow")))  # no column without the setting
