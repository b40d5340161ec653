"""Batches of packed rows through `collate_assets.training`: what transformers' `Trainer` and TRL's
`SFTTrainer` train on them is each conversation's own loss.

Real conversations (the shared fastchat data, multi-turn, assistant-only labels) go through the engine
into packed rows of at most 256 tokens (2-4 conversations each). A tiny randomly initialised Llama
(float32, CPU) scores every conversation alone once; then:

- `Trainer` (per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=0 so every
  micro-batch meets the same weights) trains one epoch through `PackedRowsCollator()`. A spy on the
  model's forward keeps the per-token losses of each micro-batch Trainer built; every conversation of
  every row must have exactly its losses alone (1e-5), every row once, and the loss Trainer
  back-propagates must be the sum of those losses over the accumulated batch's trained tokens.
  Negative control: the same run through transformers' `DataCollatorWithFlattening`, which restarts
  position_ids per row: a row's first conversation still matches, every later one does not;
- "pad" batches (and "flatten" with varlen kwargs) give the same per-token losses under sdpa, eager and a
  reference varlen attention that reads only `cu_seq_lens_q/k` / `max_length_q/k` (a stand-in for
  FlashAttention's varlen kernel, which needs a GPU); control: row-level cu_seq_lens fail;
- TRL's `SFTTrainer` with `skip_prepare_dataset` and our collator: the same equality through its
  fused LM head (one optimizer step, 8 rows); its own padding-free collator builds the same batch from
  `seq_lengths`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")  # CI installs torch ([test] extra)
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import (  # noqa: E402
    AttentionInterface,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from collate_assets.core import IGNORE_INDEX, CollateSettings, collate_file, read_packed  # noqa: E402
from collate_assets.training import PackedRowsCollator, collate_packed_rows  # noqa: E402
from collate_assets_tests.tiny_models import next_token_nll, tiny_llama  # noqa: E402
from collate_assets_tests.helpers import (  # noqa: E402
    REPO_ROOT,
    SHARED_DATA_FILES,
    SHARED_DIR,
    load_shared_tokenizer,
    read_json_array,
    require,
    subprocess_env,
)

CONVERSATIONS = 40
MAX_LENGTH = 256  # 40 fastchat conversations -> 15 rows of 2-4 conversations
BATCH, ACCUMULATION = 4, 2
ATOL = 1e-5  # per-token losses
REL_TOL = 1e-5  # loss sums
CONTROL_MARGIN = 10  # a control must miss the tolerance by at least this factor
REFERENCE_VARLEN = "collate_varlen_reference"


# -- material ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_shared_tokenizer("SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def packed_path(tokenizer, tmp_path_factory):
    records = read_json_array(require(SHARED_DIR / SHARED_DATA_FILES["fastchat"], "shared fastchat data"))
    folder = tmp_path_factory.mktemp("training-collator")
    source = folder / "fastchat.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records[:CONVERSATIONS]), encoding="utf-8")
    out = folder / "fastchat.arrow"
    collate_file(source, out, tokenizer, CollateSettings(max_length=MAX_LENGTH, labels="assistant"), "arrow")
    return out


@pytest.fixture(scope="module")
def rows(packed_path) -> list[dict]:
    rows = list(read_packed(packed_path, "arrow"))
    assert sum(len(r["seq_lengths"]) for r in rows) == CONVERSATIONS
    assert all(len(r["seq_lengths"]) >= 2 for r in rows)  # every row can leak between its conversations
    assert len(rows) > BATCH * ACCUMULATION  # more than one optimizer step, and a last short micro-batch
    return rows


@pytest.fixture(scope="module")
def vocab_size(tokenizer) -> int:
    return len(tokenizer)


def conversation_losses(nll: torch.Tensor, labels: torch.Tensor, seq_lengths) -> list[torch.Tensor]:
    """Split one row's next-token losses (nll[t] = -log p(token t+1 | ..t)) into its conversations: per
    conversation, the losses of the targets its labels train. A conversation's last position predicts the
    next one's first token (label -100) and is no part of it."""
    out, start = [], 0
    for length in seq_lengths:
        length = int(length)
        trained = labels[start + 1 : start + length] != IGNORE_INDEX
        out.append(nll[start : start + length - 1][trained])
        start += length
    return out


@pytest.fixture(scope="module")
def alone(rows, vocab_size) -> list[list[torch.Tensor]]:
    """Per row, per conversation: its trained tokens' losses when it runs alone (no packing at all)."""
    model = tiny_llama(vocab_size).eval()
    out = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor(row["input_ids"])
            labels = torch.tensor(row["labels"])
            per_row, start = [], 0
            for length in row["seq_lengths"]:
                seq = ids[start : start + length]
                logits = model(input_ids=seq[None], use_cache=False).logits[0]
                per_row.append(conversation_losses(next_token_nll(logits, seq), labels[start : start + length], [length])[0])
                start += length
            out.append(per_row)
    assert sum(len(t) for r in out for t in r) > 0
    return out


def max_diff(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    """Per conversation: max |got - want| over its trained tokens (inf when the token sets differ)."""
    assert len(got) == len(want)
    return [(g - w).abs().max().item() if len(g) == len(w) and len(g) else (0.0 if len(g) == len(w) else math.inf)
            for g, w in zip(got, want)]


# -- Trainer: each micro-batch Trainer builds trains each conversation as if it were alone ----------------


class Tagged:
    """A collator wrapper that also passes which rows a batch holds (`_row_ids`) and their `_seq_lengths`,
    taken from the rows themselves, so the recorder can split the batch whatever the collator did."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator([{k: v for k, v in f.items() if k != "row_id"} for f in features])
        batch["_row_ids"] = [int(f["row_id"]) for f in features]
        batch["_seq_lengths"] = [[int(x) for x in f["seq_lengths"]] for f in features]
        return batch


def recording(trainer_class):
    """`trainer_class` whose compute_loss keeps, for every micro-batch, the per-conversation losses of the
    very forward pass it makes (captured by a spy on the model's forward), with the loss it returns."""

    class Recording(trainer_class):
        def install_spy(self):
            self.records, self._captured = [], []
            original = self.model.forward  # TRL's SFTTrainer has patched in its fused LM head by now

            def spy(*args, **kwargs):
                out = original(*args, **kwargs)
                self._captured.append((sorted(kwargs), out))
                return out

            self.model.forward = spy

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            row_ids, seq_lengths = inputs.pop("_row_ids"), inputs.pop("_seq_lengths")
            self._captured.clear()
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            keys, out = self._captured[-1]
            ids, labels = inputs["input_ids"], inputs["labels"]
            assert ids.shape[0] == 1  # flattened: one row per micro-batch
            if getattr(out, "log_probs", None) is not None:  # TRL's fused LM head: -log p of every next label
                nll = -out.log_probs[0].detach()
            else:
                nll = next_token_nll(out.logits[0].detach(), ids[0])
            flat = [length for lengths in seq_lengths for length in lengths]
            trained_sum = nll[labels[0, 1:] != IGNORE_INDEX].sum().item()
            self.records.append({
                "step": self.state.global_step,
                "keys": keys,
                "row_ids": row_ids,
                "losses": conversation_losses(nll, labels[0], flat),
                "loss": (loss[0] if isinstance(loss, tuple) else loss).item(),
                "num_items": None if num_items_in_batch is None else float(num_items_in_batch),
                "trained_sum": trained_sum,
                "trained": int((labels[0, 1:] != IGNORE_INDEX).sum()),
            })
            return loss

    return Recording


def sft_args(tmp_path, **extra):
    """SFTConfig for a float32 comparison on CPU: SFTConfig turns bf16 and gradient checkpointing on by
    default (transformers 5 names the latter activation_checkpointing, the old name warns)."""
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    extra.update({"bf16": False, checkpointing: False, "max_length": None, "dataset_kwargs": {"skip_prepare_dataset": True}})
    return training_args(tmp_path, SFTConfig, **extra)


def training_args(tmp_path, config_class=TrainingArguments, **extra):
    return config_class(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        num_train_epochs=1,
        learning_rate=0.0,  # every micro-batch meets the weights the conversations were scored alone with
        remove_unused_columns=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        **extra,
    )


def train_and_record(trainer_class, model, dataset, collator, tmp_path, **kwargs):
    trainer = recording(trainer_class)(model=model, train_dataset=dataset, data_collator=Tagged(collator), **kwargs)
    trainer.install_spy()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # learning rate 0: the weights never moved
    return trainer


@pytest.fixture(scope="module")
def dataset(packed_path):
    from datasets import Dataset

    ds = Dataset.from_file(str(packed_path))
    return ds.add_column("row_id", list(range(len(ds))))


def per_row_losses(trainer, rows) -> dict[int, list[torch.Tensor]]:
    """Row id -> its conversations' losses in the micro-batch it was trained in; each row exactly once."""
    out = {}
    for record in trainer.records:
        losses = iter(record["losses"])
        for row_id in record["row_ids"]:
            assert row_id not in out, f"row {row_id} trained twice in one epoch"
            out[row_id] = [next(losses) for _ in rows[row_id]["seq_lengths"]]
        assert next(losses, None) is None
    assert sorted(out) == list(range(len(rows)))  # every row once
    return out


def check_trainer_run(trainer, rows, alone):
    records = trainer.records
    micro_batches = math.ceil(len(rows) / BATCH)
    assert len(records) == micro_batches
    assert trainer.state.global_step == math.ceil(micro_batches / ACCUMULATION)
    assert [len(r["row_ids"]) for r in records] == [BATCH] * (micro_batches - 1) + [len(rows) - BATCH * (micro_batches - 1)]
    for record in records:  # what the model's forward received: no attention_mask
        assert {"input_ids", "labels", "position_ids"} <= set(record["keys"]) and "attention_mask" not in record["keys"]
    # The loss Trainer back-propagates: the micro-batch's summed token losses over the trained tokens of its
    # whole accumulated batch (Trainer counts them before the first micro-batch of an optimizer step).
    for step in {r["step"] for r in records}:
        group = [r for r in records if r["step"] == step]
        trained = sum(r["trained"] for r in group)
        for record in group:
            assert record["num_items"] == trained
            assert record["loss"] * record["num_items"] == pytest.approx(record["trained_sum"], rel=REL_TOL)
    got = per_row_losses(trainer, rows)
    return {row_id: max_diff(got[row_id], alone[row_id]) for row_id in got}


def test_trainer_trains_each_conversation_of_a_flattened_batch_as_if_alone(tmp_path, rows, alone, dataset, vocab_size):
    trainer = train_and_record(Trainer, tiny_llama(vocab_size), dataset, PackedRowsCollator(), tmp_path,
                               args=training_args(tmp_path))
    diffs = check_trainer_run(trainer, rows, alone)
    worst = max(d for ds in diffs.values() for d in ds)
    print(f"Trainer + PackedRowsCollator: {len(diffs)} rows, {CONVERSATIONS} conversations, max token diff {worst:.1e}")
    assert worst <= ATOL
    got = per_row_losses(trainer, rows)
    for row_id in diffs:  # each conversation's loss sum too
        for g, a in zip(got[row_id], alone[row_id]):
            assert g.sum().item() == pytest.approx(a.sum().item(), rel=REL_TOL, abs=1e-6)


def test_control_datacollatorwithflattening_merges_the_conversations_of_a_row(tmp_path, rows, alone, dataset, vocab_size):
    """transformers' DataCollatorWithFlattening restarts position_ids once per ROW: the conversations of a
    row become one sequence. Its first conversation sees nothing before it either way; every later one
    attends to the earlier ones and its losses change."""
    trainer = train_and_record(Trainer, tiny_llama(vocab_size), dataset, DataCollatorWithFlattening(), tmp_path,
                               args=training_args(tmp_path))
    diffs = check_trainer_run(trainer, rows, alone)
    first = max(d[0] for d in diffs.values())
    later = min(x for d in diffs.values() for x in d[1:])
    print(f"DataCollatorWithFlattening: first conversations max diff {first:.1e}, later ones min diff {later:.1e}")
    assert first <= ATOL
    assert later > CONTROL_MARGIN * ATOL
    batch = DataCollatorWithFlattening()(rows[:BATCH])
    assert int((batch["position_ids"] == 0).sum()) == BATCH  # one restart per row, not per conversation


# -- pad mode and the varlen kwargs ----------------------------------------------------------------------


def reference_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """What FlashAttention's varlen kernel computes, from the same kwargs transformers hands it: causal
    attention within each [cu_seq_lens[i], cu_seq_lens[i+1]) of the flattened batch, nothing across."""
    assert attention_mask is None and dropout == 0.0
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    max_q, max_k = kwargs["max_length_q"], kwargs["max_length_k"]
    assert torch.equal(cu_q, cu_k) and max_q == max_k and cu_q.dtype == torch.int32
    batch, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim).repeat_interleave(heads // key.shape[1], dim=1)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim).repeat_interleave(heads // value.shape[1], dim=1)
    assert int(cu_q[-1]) == batch * length and int(cu_q.diff().max()) == max_q
    out = torch.empty_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        out[a:b] = F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scaling
        ).transpose(0, 1)
    return out.reshape(batch, length, heads, dim), None


AttentionInterface.register(REFERENCE_VARLEN, reference_varlen_attention)


def batch_losses(model, batch, seq_lengths_per_row, **extra) -> tuple[float, list[torch.Tensor]]:
    """The model's own loss for `batch`, and the per-conversation losses, row by row."""
    with torch.no_grad():
        out = model(**batch, **(extra or {"use_cache": False}))
    per_conversation = []
    for r, lengths in enumerate(seq_lengths_per_row):
        nll = next_token_nll(out.logits[r], batch["input_ids"][r])
        per_conversation += conversation_losses(nll, batch["labels"][r], lengths)
    return out.loss.item(), per_conversation


@pytest.fixture(scope="module")
def uneven_rows(rows):
    """Four rows of different lengths (so padding), from the longest and the shortest."""
    chosen = sorted(rows, key=lambda r: len(r["input_ids"]))
    chosen = [chosen[-1], chosen[0], chosen[len(chosen) // 2], chosen[1]]
    assert len({len(r["input_ids"]) for r in chosen}) == 4
    return chosen


@pytest.mark.parametrize("attn", ["sdpa", "eager", REFERENCE_VARLEN])
def test_padded_and_flattened_batches_give_the_same_losses(attn, uneven_rows, rows, alone, vocab_size):
    model = tiny_llama(vocab_size, attn).eval()
    varlen = attn == REFERENCE_VARLEN  # FlashAttention-like: it reads the kwargs (and fails without them)
    want = [t for row in uneven_rows for t in alone[next(i for i, r in enumerate(rows) if r is row)]]
    flat_lengths = [[x for row in uneven_rows for x in row["seq_lengths"]]]
    row_lengths = [row["seq_lengths"] for row in uneven_rows]
    flat_loss, flat = batch_losses(model, collate_packed_rows(uneven_rows, varlen_kwargs=varlen), flat_lengths)
    pad_loss, padded = batch_losses(
        model, collate_packed_rows(uneven_rows, mode="pad", varlen_kwargs=varlen, pad_token_id=7), row_lengths
    )
    # pad_to_multiple_of adds a padding sequence after the flattened row: nothing changes either
    multiple_loss, multiple = batch_losses(
        model, collate_packed_rows(uneven_rows, varlen_kwargs=varlen, pad_to_multiple_of=64), flat_lengths
    )
    print(f"{attn}: flatten {flat_loss:.6f} pad {pad_loss:.6f} multiple-of-64 {multiple_loss:.6f}; "
          f"max token diff to alone: flatten {max(max_diff(flat, want)):.1e} pad {max(max_diff(padded, want)):.1e}")
    assert pad_loss == pytest.approx(flat_loss, rel=REL_TOL) and multiple_loss == pytest.approx(flat_loss, rel=REL_TOL)
    for got in (flat, padded, multiple):
        assert max(max_diff(got, want)) <= ATOL


def test_control_row_level_cu_seq_lens_merge_the_conversations(uneven_rows, rows, alone, vocab_size):
    """The varlen kernel trusts cu_seq_lens alone: DataCollatorWithFlattening's (one per row) let every
    later conversation of a row attend to the earlier ones."""
    model = tiny_llama(vocab_size, REFERENCE_VARLEN).eval()
    ours = collate_packed_rows(uneven_rows, varlen_kwargs=True)
    theirs = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(uneven_rows)
    assert torch.equal(theirs["input_ids"], ours["input_ids"]) and torch.equal(theirs["labels"], ours["labels"])
    assert len(theirs["cu_seq_lens_q"]) == len(uneven_rows) + 1 < len(ours["cu_seq_lens_q"])
    want = [t for row in uneven_rows for t in alone[next(i for i, r in enumerate(rows) if r is row)]]
    _, got = batch_losses(model, theirs, [[x for row in uneven_rows for x in row["seq_lengths"]]])
    diffs = max_diff(got, want)
    firsts = np.cumsum([0] + [len(r["seq_lengths"]) for r in uneven_rows])[:-1]
    assert max(diffs[i] for i in firsts) <= ATOL
    assert min(d for i, d in enumerate(diffs) if i not in firsts) > CONTROL_MARGIN * ATOL


def _toy_rows():
    """Two hand-made packed rows: (3, 2) and (4,) tokens; the second as numpy arrays."""
    return [
        {"input_ids": [11, 12, 13, 21, 22], "labels": [-100, 12, 13, -100, 22], "position_ids": [0, 1, 2, 0, 1],
         "seq_lengths": [3, 2], "row_id": 0},
        {k: np.asarray(v, dtype=np.int32) for k, v in
         {"input_ids": [31, 32, 33, 34], "labels": [-100, -100, 33, 34], "position_ids": [0, 1, 2, 3],
          "seq_lengths": [4]}.items()},
    ]


def test_collator_shapes_and_values():
    rows = _toy_rows()
    flat = PackedRowsCollator(varlen_kwargs=True)(rows)
    assert set(flat) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                         "max_length_k"}
    assert flat["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34]]
    assert flat["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, -100, 33, 34]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]  # each row keeps its own
    assert flat["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and flat["cu_seq_lens_q"].dtype == torch.int32
    assert flat["cu_seq_lens_k"] is flat["cu_seq_lens_q"]
    assert flat["max_length_q"] == flat["max_length_k"] == 4 and isinstance(flat["max_length_q"], int)
    assert all(flat[k].dtype == torch.int64 for k in ("input_ids", "labels", "position_ids"))

    padded = collate_packed_rows(rows, mode="pad", varlen_kwargs=True, pad_token_id=0, pad_to_multiple_of=4)
    assert padded["input_ids"].tolist() == [[11, 12, 13, 21, 22, 0, 0, 0], [31, 32, 33, 34, 0, 0, 0, 0]]
    assert padded["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, -100, -100], [-100, -100, 33, 34] + [-100] * 4]
    # the padding is a sequence of its own: its positions restart at 0, and cu_seq_lens count it
    assert padded["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert padded["cu_seq_lens_q"].tolist() == [0, 3, 5, 8, 12, 16] and padded["max_length_q"] == 4
    assert "attention_mask" not in padded

    multiple = collate_packed_rows(rows, pad_to_multiple_of=8, varlen_kwargs=True, pad_token_id=5)
    assert multiple["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34] + [5] * 7]
    assert multiple["position_ids"].tolist()[0][9:] == list(range(7))
    assert multiple["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 16] and multiple["max_length_q"] == 7
    assert collate_packed_rows(rows[:1], mode="pad")["input_ids"].shape == (1, 5)  # nothing to pad

    # A trainer's remove_unused_columns drops seq_lengths (Trainer) or position_ids (SFTTrainer): the same batch
    for drop in ("seq_lengths", "position_ids"):
        partial = [{k: v for k, v in r.items() if k != drop} for r in rows]
        again = collate_packed_rows(partial, varlen_kwargs=True)
        assert all(torch.equal(again[k], flat[k]) for k in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"))
    # labels at a sequence start are never trained, whatever the row says
    leaky = [dict(rows[0], labels=[11, 12, 13, 21, 22])]
    assert collate_packed_rows(leaky)["labels"].tolist() == [[-100, 12, 13, -100, 22]]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"input_ids": [1, 2, 3], "labels": [1, 2, 3], "position_ids": [0, 1, 2], "seq_lengths": [2, 1]}, "do not restart"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [2, 2]}, "do not add up"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2]}, "labels"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, "neither position_ids nor seq_lengths"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2, 3], "position_ids": [1, 2, 3]}, "do not start at 0"),
    ],
)
def test_collator_refuses_rows_whose_boundaries_disagree(row, message):
    with pytest.raises((ValueError, KeyError), match=message):
        collate_packed_rows([row])
    with pytest.raises(ValueError, match="mode"):
        PackedRowsCollator(mode="padding")


# -- the pitfalls the docs name ------------------------------------------------------------------------


def test_pitfall_trainers_default_collators_fail_on_rows_of_different_lengths(rows, tokenizer):
    """Without data_collator, Trainer stacks rows as they are (default_data_collator), or with a
    processing_class pads input_ids only (DataCollatorWithPadding): batch size > 1 fails either way."""
    batch = [{k: r[k] for k in ("input_ids", "labels", "position_ids")} for r in rows[:BATCH]]
    assert len({len(r["input_ids"]) for r in batch}) > 1
    with pytest.raises(ValueError, match="expected sequence of length"):
        default_data_collator(batch)
    with pytest.raises(ValueError, match="Unable to create tensor"):
        DataCollatorWithPadding(tokenizer)(batch)


def test_pitfall_an_attention_mask_or_a_cache_merges_the_conversations(rows, alone, vocab_size):
    """transformers reads the boundaries from position_ids only without an attention_mask and a cache."""
    model = tiny_llama(vocab_size).eval()
    batch = collate_packed_rows(rows[:2])
    want = alone[0] + alone[1]
    lengths = [[*rows[0]["seq_lengths"], *rows[1]["seq_lengths"]]]
    assert max(max_diff(batch_losses(model, batch, lengths, use_cache=False)[1], want)) <= ATOL
    for extra in ({"attention_mask": torch.ones_like(batch["input_ids"]), "use_cache": False}, {"use_cache": True}):
        assert max(max_diff(batch_losses(model, batch, lengths, **extra)[1], want)) > CONTROL_MARGIN * ATOL


def test_torch_is_imported_by_the_training_module_only():
    code = (
        "import sys, collate_assets.cli, collate_assets.core, collate_assets.core.api, collate_assets.training; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # collate_assets.training imports torch only to make a batch or an order


# -- TRL's SFTTrainer ----------------------------------------------------------------------------------


def test_sfttrainer_takes_prepacked_rows_with_our_collator(tmp_path, rows, alone, dataset, tokenizer, vocab_size):
    """SFTTrainer with skip_prepare_dataset (no tokenizing, no packing, no truncation) and our collator:
    padding_free must stay False (SFTTrainer refuses a custom collator then), bf16 and gradient
    checkpointing are SFTConfig's defaults and are turned off for a float32 comparison on CPU."""
    from trl import SFTTrainer

    args = sft_args(tmp_path, packing=False, padding_free=False)
    # One optimizer step (two micro-batches of 4 rows): TRL's fused LM head is slow on CPU (~1.5 s a micro-batch).
    count = BATCH * ACCUMULATION
    trainer = train_and_record(SFTTrainer, tiny_llama(vocab_size), dataset.select(range(count)), PackedRowsCollator(),
                               tmp_path, args=args, processing_class=tokenizer)
    fused = all("fused_lm_head" in r["keys"] for r in trainer.records)  # TRL 1.x: log-probs without full logits
    diffs = check_trainer_run(trainer, rows[:count], alone)
    worst = max(d for ds in diffs.values() for d in ds)
    print(f"SFTTrainer + PackedRowsCollator (fused LM head: {fused}): max token diff {worst:.1e}")
    assert worst <= ATOL


def test_trl_padding_free_collator_builds_the_same_batch_from_seq_lengths(rows, dataset, tmp_path, tokenizer, vocab_size):
    """TRL's own padding-free collator (SFTConfig(padding_free=True), no data_collator) restarts position_ids
    from `seq_lengths`, so it gives our batch; with a custom collator, padding_free=True is refused."""
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    features = [{k: rows[i][k] for k in ("input_ids", "labels", "seq_lengths")} for i in range(BATCH)]
    theirs = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(features)
    ours = collate_packed_rows(rows[:BATCH], varlen_kwargs=True)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        assert torch.equal(theirs[key].to(ours[key].dtype), ours[key]), key
    assert theirs["max_length_q"] == ours["max_length_q"] and "attention_mask" not in theirs
    args = sft_args(tmp_path, padding_free=True)
    with pytest.raises(ValueError, match="custom data collator"):
        SFTTrainer(model=tiny_llama(vocab_size), args=args, train_dataset=dataset, processing_class=tokenizer,
                   data_collator=PackedRowsCollator())
