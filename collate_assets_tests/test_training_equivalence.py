"""End to end: a packed row trains exactly like its sequences run one by one.

Real conversations go through the engine (`collate_file` → packed Arrow rows); a tiny randomly
initialised Llama then scores each row twice: packed (no attention_mask, position_ids restarting at 0
per sequence, `use_cache=False`, so transformers builds a block-diagonal causal mask from the
position_ids) and one sequence at a time. Loss sums, per-token losses and logits must agree.

Two negative controls show the comparison can fail: the same row as one long sequence
(position_ids = arange), and a label left on a later sequence's first token (the previous
conversation's last token would then be trained to predict it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402
from collate_assets_tests.tiny_models import tiny_llama  # noqa: E402

from collate_assets.core import (  # noqa: E402
    IGNORE_INDEX,
    CollateSettings,
    collate_file,
    load_tokenizer,
    read_packed,
)

from collate_assets_tests.helpers import SHARED_DIR  # noqa: E402

TOKENIZER_DIR = SHARED_DIR / "tokenizers" / "SmolLM2-135M-Instruct"
KTO_DEMO = SHARED_DIR / "data" / "llamafactory_kto_en_demo" / "kto_en_demo.json"

CONVERSATIONS = 40
MAX_LENGTH = 1024
ROWS_CHECKED = 3  # the rows holding the most sequences; a forward pass over a row costs ~0.3 s on CPU
REL_TOL = 1e-5  # loss sums: |packed - one by one| <= REL_TOL * one by one
ATOL = 1e-5  # logits and per-token losses
CONTROL_MARGIN = 10  # a control must miss the tolerance by at least this factor, not by luck
# The model: collate_assets_tests.tiny_models (why its initializer_range is 0.1 is said there).


@pytest.fixture(scope="module")
def tokenizer():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"shared tokenizer not found at {TOKENIZER_DIR} (../shared beside the checkout)")
    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def chats_jsonl(tmp_path_factory) -> Path:
    if not KTO_DEMO.is_file():
        pytest.skip(f"shared data set not found at {KTO_DEMO} (../shared beside the checkout)")
    conversations = json.loads(KTO_DEMO.read_text(encoding="utf-8"))[:CONVERSATIONS]
    path = tmp_path_factory.mktemp("chats") / "kto_en_demo.jsonl"
    path.write_text("".join(json.dumps({"messages": c["messages"]}) + "\n" for c in conversations), encoding="utf-8")
    return path


def _starts(seq_lengths: list[int]) -> list[int]:
    starts, at = [], 0
    for length in seq_lengths:
        starts.append(at)
        at += length
    return starts


@pytest.fixture(scope="module", params=["all", "assistant"], ids=lambda p: f"labels={p}")
def packed_rows(request, tokenizer, chats_jsonl, tmp_path_factory) -> list[dict]:
    """Rows the engine wrote, restricted to the few holding the most sequences (at least 2)."""
    out = tmp_path_factory.mktemp(f"packed-{request.param}") / "x.arrow"
    collate_file(chats_jsonl, out, tokenizer, CollateSettings(max_length=MAX_LENGTH, labels=request.param), "arrow")
    rows = list(read_packed(out, "arrow"))
    multi = sorted((r for r in rows if len(r["seq_lengths"]) >= 2), key=lambda r: -len(r["seq_lengths"]))
    assert len(multi) >= ROWS_CHECKED, f"only {len(multi)} of {len(rows)} rows hold >= 2 sequences"
    chosen = multi[:ROWS_CHECKED]
    for row in chosen:  # the packing contract the equivalence relies on
        assert set(row) == {"input_ids", "labels", "position_ids", "seq_lengths"}  # no attention_mask
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        for start, length in zip(_starts(row["seq_lengths"]), row["seq_lengths"]):
            assert row["position_ids"][start : start + length] == list(range(length))
            assert row["labels"][start] == IGNORE_INDEX
        # A label is its token or ignored: the loss of any label set is a masked sum of next-token losses.
        assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(row["labels"], row["input_ids"]))
    return chosen


def next_token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(ids[t + 1] | ids[..t]) for every position t of one forward pass."""
    return F.cross_entropy(logits[:-1], ids[1:], reduction="none")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@dataclasses.dataclass
class TokenRowScores:
    """What the labels do not change, for one token row and one model: measured once, then shared by
    both labels modes (they pack the same rows). Only these small vectors are kept, never the
    (tokens x 49k vocabulary) logits."""

    seq_lengths: list[int]
    packed_nll: torch.Tensor  # next-token losses of the packed pass (position_ids restart, no mask)
    alone_nll: list[torch.Tensor]  # next-token losses of each sequence run alone
    alone_logit_diff: list[float]  # per sequence: max |packed logits - alone logits|
    long_nll: torch.Tensor  # next-token losses of the control pass: position_ids = arange(len(row))
    long_first_logit_diff: float  # first sequence: max |long - alone| (nothing precedes it either way)
    long_rest_logit_diff: float  # later sequences: max |long - packed|


def score_tokens(model, ids: torch.Tensor, positions: torch.Tensor, seq_lengths: list[int]) -> TokenRowScores:
    def logits(ids, positions):
        return model(input_ids=ids[None], position_ids=positions[None], use_cache=False).logits[0]

    with torch.no_grad():
        packed = logits(ids, positions)
        long = logits(ids, torch.arange(len(ids)))
        alone_nll, alone_diff = [], []
        for start, length in zip(_starts(seq_lengths), seq_lengths):
            seq_ids = ids[start : start + length]
            alone = logits(seq_ids, torch.arange(length))
            alone_nll.append(next_token_losses(alone, seq_ids))
            alone_diff.append(max_abs_diff(packed[start : start + length], alone))
            if start == 0:
                long_first_diff = max_abs_diff(long[:length], alone)
        first = seq_lengths[0]
        return TokenRowScores(
            seq_lengths=seq_lengths,
            packed_nll=next_token_losses(packed, ids),
            alone_nll=alone_nll,
            alone_logit_diff=alone_diff,
            long_nll=next_token_losses(long, ids),
            long_first_logit_diff=long_first_diff,
            long_rest_logit_diff=max_abs_diff(long[first:], packed[first:]),
        )


class Scorer:
    """The tiny model, with its label-independent measurements cached per token row."""

    def __init__(self, model):
        self.model = model
        self._cache: dict[bytes, TokenRowScores] = {}

    def scores(self, ids: torch.Tensor, positions: torch.Tensor, seq_lengths: list[int]) -> TokenRowScores:
        key = ids.numpy().tobytes() + b"|" + positions.numpy().tobytes()
        if key not in self._cache:
            self._cache[key] = score_tokens(self.model, ids, positions, seq_lengths)
        return self._cache[key]


@pytest.fixture(scope="module", params=["sdpa", "eager"], ids=lambda p: f"attn={p}")
def scorer(request, tokenizer) -> Scorer:
    model = tiny_llama(len(tokenizer), request.param).eval()
    assert next(model.parameters()).dtype == torch.float32
    return Scorer(model)


@dataclasses.dataclass
class RowPass:
    """One packed row with its labels: packed losses computed straight from the labels, and the
    label-independent measurements of its tokens."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    scores: TokenRowScores
    packed_loss_sum: float  # cross-entropy(ignore_index=-100, sum) over the packed pass, shifted by hand
    model_loss: float  # the model's own mean loss from `labels=` in that same pass
    leaky_loss_sum: float  # the same pass scored with labels[start] = token for every later sequence

    @property
    def seq_lengths(self) -> list[int]:
        return self.scores.seq_lengths

    @functools.cached_property
    def starts(self) -> list[int]:
        return _starts(self.seq_lengths)

    @functools.cached_property
    def trained(self) -> int:
        return int((self.labels[1:] != IGNORE_INDEX).sum())

    @functools.cached_property
    def sequence_trained(self) -> list[torch.Tensor]:
        """Per sequence alone: which next-token targets its own labels slice trains (shifted)."""
        return [
            self.labels[start + 1 : start + length] != IGNORE_INDEX
            for start, length in zip(self.starts, self.seq_lengths)
        ]

    @functools.cached_property
    def sequences_loss_sum(self) -> float:
        """Each sequence run alone, its cross-entropy summed over its trained tokens; then summed."""
        return sum(nll[mask].sum().item() for nll, mask in zip(self.scores.alone_nll, self.sequence_trained))

    def token_loss_diff(self, row_nll: torch.Tensor) -> float:
        """Largest per-token loss difference between a whole-row pass and the sequences alone, over
        trained tokens. A row position that ends a sequence has no counterpart alone (its target, the
        next sequence's first label, is -100) and is dropped."""
        keep = torch.ones(len(row_nll), dtype=torch.bool)
        keep[[s - 1 for s in self.starts[1:]]] = False
        trained = torch.cat(self.sequence_trained)
        assert torch.equal(trained, (self.labels[1:] != IGNORE_INDEX)[keep])
        return max_abs_diff(row_nll[keep][trained], torch.cat(self.scores.alone_nll)[trained])

    def long_loss_sum(self) -> float:
        return self.scores.long_nll[self.labels[1:] != IGNORE_INDEX].sum().item()

    def cross_sequence_terms(self) -> float:
        """Loss of each later sequence's first token predicted from the previous sequence's last token."""
        return self.scores.packed_nll[[s - 1 for s in self.starts[1:]]].sum().item()


@pytest.fixture(scope="module")
def passes(scorer, packed_rows) -> list[RowPass]:
    # `scorer` first: pytest then builds each model once and its cached measurements serve both labels modes.
    out = []
    for row in packed_rows:
        ids = torch.tensor(row["input_ids"], dtype=torch.long)
        labels = torch.tensor(row["labels"], dtype=torch.long)
        positions = torch.tensor(row["position_ids"], dtype=torch.long)
        scores = scorer.scores(ids, positions, row["seq_lengths"])
        later = _starts(row["seq_lengths"])[1:]
        leaky = labels.clone()
        leaky[later] = ids[later]
        with torch.no_grad():
            packed = scorer.model(
                input_ids=ids[None], position_ids=positions[None], labels=labels[None], use_cache=False
            )
            logp = packed.logits[0, :-1].log_softmax(-1)
            # cross_entropy = nll_loss(log_softmax): one log_softmax over the vocabulary for both label sets.
            packed_sum = F.nll_loss(logp, labels[1:], ignore_index=IGNORE_INDEX, reduction="sum").item()
            leaky_sum = F.nll_loss(logp, leaky[1:], ignore_index=IGNORE_INDEX, reduction="sum").item()
            model_loss = packed.loss.item()
        del packed, logp
        out.append(RowPass(ids, labels, scores, packed_sum, model_loss, leaky_sum))
    return out


def test_packed_loss_equals_sum_of_sequence_losses(passes):
    for p in passes:
        packed, one_by_one = p.packed_loss_sum, p.sequences_loss_sum
        model_sum = p.model_loss * p.trained  # the model shifts labels itself and takes the mean
        token_diff = p.token_loss_diff(p.scores.packed_nll)
        print(
            f"seqs={p.seq_lengths} trained={p.trained} packed={packed:.4f} one_by_one={one_by_one:.4f} "
            f"rel={abs(packed - one_by_one) / one_by_one:.1e} "
            f"model_labels_rel={abs(model_sum - one_by_one) / one_by_one:.1e} max_token_diff={token_diff:.1e}"
        )
        assert p.trained > 0
        assert packed == pytest.approx(one_by_one, rel=REL_TOL, abs=0)
        assert model_sum == pytest.approx(one_by_one, rel=REL_TOL, abs=0)
        # Token by token as well: a row sum can hide changes that cancel.
        assert token_diff <= ATOL


def test_packed_logits_equal_standalone_logits(passes):
    for p in passes:
        diffs = p.scores.alone_logit_diff
        print(f"seqs={p.seq_lengths} max |packed - alone| logits per sequence: {[f'{d:.1e}' for d in diffs]}")
        assert len(diffs) == len(p.seq_lengths) >= 2
        assert max(diffs) <= ATOL


def test_control_one_long_sequence_fails_the_equality(passes):
    """position_ids = arange(len(row)): one increasing run, so transformers' find_packed_sequence_indices
    finds no boundary, the mask is plainly causal and tokens attend to earlier conversations."""
    for p in passes:
        rel = abs(p.long_loss_sum() - p.sequences_loss_sum) / p.sequences_loss_sum
        token_diff = p.token_loss_diff(p.scores.long_nll)
        first_diff, rest_diff = p.scores.long_first_logit_diff, p.scores.long_rest_logit_diff
        print(
            f"seqs={p.seq_lengths} one long sequence: rel loss diff={rel:.1e} max_token_diff={token_diff:.1e} "
            f"logit diff first sequence={first_diff:.1e} later sequences={rest_diff:.1e}"
        )
        assert rel > CONTROL_MARGIN * REL_TOL
        assert token_diff > CONTROL_MARGIN * ATOL
        assert rest_diff > CONTROL_MARGIN * ATOL
        # The first conversation sees nothing before it either way: the change comes from crossing boundaries.
        assert first_diff <= ATOL


def test_control_label_on_a_sequence_start_trains_across_the_boundary(passes):
    """Had labels[start] of a later sequence not been -100, the previous conversation's last token
    would be trained to predict it: the packed loss gains exactly those cross-sequence terms."""
    for p in passes:
        excess = p.leaky_loss_sum - p.sequences_loss_sum
        cross = p.cross_sequence_terms()
        rel = excess / p.sequences_loss_sum
        print(f"seqs={p.seq_lengths} leaky labels: rel loss diff={rel:.1e} cross-sequence terms={cross:.4f}")
        assert abs(excess) > CONTROL_MARGIN * REL_TOL * p.sequences_loss_sum
        assert excess == pytest.approx(cross, rel=1e-3)
