"""Feed packed rows to a model: a collator for transformers' `Trainer` (and TRL's `SFTTrainer`), and a
reader that gives each data-parallel rank its own rows of the Arrow outputs.

    PackedRowsCollator(mode="flatten" | "pad", pad_to_multiple_of=None, varlen_kwargs=None, pad_token_id=0)
    collate_packed_rows(rows, *, mode=..., pad_to_multiple_of=..., varlen_kwargs=..., pad_token_id=...)
    PackedRowsDataset(paths_or_folder, *, split="train")       memory-mapped rows; rank_indices, rank_rows
    rank_rows(paths_or_folder, rank, world_size, *, seed, epoch, start_step=0, batch_size=1, drop_last=False,
              shuffle=True)                                     shuffle=False for outputs written with balance_ranks

A packed row holds several conversations; `position_ids` restart at 0 at each of them and `seq_lengths`
gives their lengths. Without an attention mask, transformers keeps sequences apart from the position_ids
(sdpa and eager: a block-diagonal causal mask; FlashAttention-2: varlen from position_ids when the batch
dimension is 1, or from `cu_seq_lens_q/k` when given). A batch of such rows must therefore keep every
row's own position_ids: transformers' `DataCollatorWithFlattening` restarts them once per *row*, which
merges the conversations of a row into one sequence (no error, different losses).

`flatten` concatenates the rows of a batch into one row (batch dimension 1, no padding). `pad` stacks them,
padded to the longest: the padding is a sequence of its own (its position_ids restart at 0, its labels are
-100), so no real token attends to it and it adds nothing to the loss. With `varlen_kwargs=True` the batch
also holds `cu_seq_lens_q/k` (int32 starts of every sequence of the flattened batch, padding included, and
its total length) and `max_length_q/k` (the longest of them, a Python int): the names transformers'
FlashAttention path and `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` use. FlashAttention-2
on a `pad` batch (batch dimension > 1) needs them: without them it attends across the sequences of a row, so "pad" mode adds them unless told not to (`varlen_kwargs=False`).

Loss weights (outputs written with the `loss_weights` setting): rows then have a float32 `loss_weights`
column, which the collator passes on as a batch key of the same shape as `labels` (0 on padding).
`weighted_loss(logits, labels, loss_weights)` is Σ w·ℓ / Σ w over the next-token losses (labels unshifted,
as everywhere here), and `LossWeightsTrainer` is transformers' `Trainer` computing it, normalised over the
whole accumulated batch (Σ w of every micro-batch of an optimizer step, summed over ranks when
`average_tokens_across_devices`), so that gradient accumulation does not change it. With
`loss_weights=conversation-mean` outputs (each conversation's weights sum to 1) that loss is the mean over
the step's conversations of each conversation's own mean loss, as unpacked per-sample training computes it.

torch is imported here only (and only when a batch or an order is made); the rest of the package never
imports it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.fs import PACKED_COLUMNS, WEIGHTS_COLUMN
from .core.settings import IGNORE_INDEX

MODES = ("flatten", "pad")

__all__ = [  # noqa: F822 (LossWeightsTrainer is made on first use, see __getattr__)
    "LossWeightsTrainer",
    "MODES",
    "PackedRowsCollator",
    "PackedRowsDataset",
    "arrow_files",
    "collate_packed_rows",
    "rank_indices",
    "rank_rows",
    "weighted_loss",
]


# -- the collator ---------------------------------------------------------------------------------------


def _as_int64(values: Any, name: str, index: int) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)  # a list, numpy array or torch tensor
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"row {index} of the batch: {name} must be a 1-D list of integers, got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def _row(row: Mapping[str, Any], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, labels, position_ids, seq_lengths) of one packed row, checked against each other.

    Either `position_ids` or `seq_lengths` may be missing (a trainer's `remove_unused_columns` drops the
    columns its model's forward does not name: transformers' Trainer drops `seq_lengths`, TRL's SFTTrainer
    `position_ids`); the other is then derived. Labels at every sequence start are set to -100: the token
    before it ends another conversation and must not be trained to predict it (the rows already have it).
    """
    missing = [name for name in ("input_ids", "labels") if name not in row]
    if missing:
        raise KeyError(f"row {index} of the batch has no {missing} (columns: {sorted(row)}): not a packed row")
    ids = _as_int64(row["input_ids"], "input_ids", index)
    labels = _as_int64(row["labels"], "labels", index).copy()
    n = len(ids)
    if len(labels) != n:
        raise ValueError(f"row {index} of the batch: {n} input_ids but {len(labels)} labels")
    positions = _as_int64(row["position_ids"], "position_ids", index) if row.get("position_ids") is not None else None
    lengths = _as_int64(row["seq_lengths"], "seq_lengths", index) if row.get("seq_lengths") is not None else None
    if positions is None and lengths is None:
        raise KeyError(f"row {index} of the batch has neither position_ids nor seq_lengths: no sequence boundaries")
    if positions is not None and len(positions) != n:
        raise ValueError(f"row {index} of the batch: {n} input_ids but {len(positions)} position_ids")
    if lengths is None:
        starts = np.flatnonzero(positions == 0)
        if n and (len(starts) == 0 or starts[0] != 0):
            raise ValueError(f"row {index} of the batch: position_ids do not start at 0")
        lengths = np.diff(np.append(starts, n)).astype(np.int64)
    if (lengths <= 0).any() or int(lengths.sum()) != n:
        raise ValueError(f"row {index} of the batch: seq_lengths {lengths.tolist()} do not add up to its {n} tokens")
    starts = np.cumsum(lengths) - lengths
    expected = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
    if positions is None:
        positions = expected
    elif not np.array_equal(positions, expected):
        raise ValueError(
            f"row {index} of the batch: position_ids do not restart at 0 exactly where seq_lengths "
            f"{lengths.tolist()} start the sequences"
        )
    labels[starts] = IGNORE_INDEX
    return ids, labels, positions, lengths


def _weights(row: Mapping[str, Any], index: int) -> np.ndarray:
    values = row[WEIGHTS_COLUMN]
    array = np.array(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float32)
    if array.ndim != 1 or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"row {index} of the batch: {WEIGHTS_COLUMN} must be a 1-D list of finite numbers >= 0")
    return array


def _padding(count: int, pad_token_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` padding tokens as a sequence of their own: never attended by, never trained."""
    return (
        np.full(count, pad_token_id, dtype=np.int64),
        np.full(count, IGNORE_INDEX, dtype=np.int64),
        np.arange(count, dtype=np.int64),
    )


def collate_packed_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    mode: str = "flatten",
    pad_to_multiple_of: int | None = None,
    varlen_kwargs: bool | None = None,
    pad_token_id: int = 0,
) -> dict[str, Any]:
    """A batch of packed rows as model inputs: `input_ids`, `labels`, `position_ids` (int64 tensors) and,
    with `varlen_kwargs`, `cu_seq_lens_q/k` (int32) and `max_length_q/k` (int). Never an attention_mask.

    rows: dicts with `input_ids`, `labels` and `position_ids` and/or `seq_lengths` (lists, numpy arrays
    or tensors, as `datasets` or `PackedRowsDataset` give them); other keys are ignored.
    mode: "flatten": one row of shape (1, total tokens), each row keeping its own position_ids;
          "pad": shape (len(rows), longest row), each row followed by its padding as a sequence of its own.
    pad_to_multiple_of: pad the flattened row, or the longest row, to a multiple of this.
    varlen_kwargs: None (default): in "pad" mode only, where FlashAttention-2 needs them to keep the
          sequences of a padded row apart (sdpa and eager ignore them); True / False: always / never.
    pad_token_id: the id of padding tokens (never attended to nor trained, so any id of the vocabulary).
    Rows without tokens are left out (a packed row is never empty); a batch without any raises ValueError.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
    weighted = [WEIGHTS_COLUMN in row and row[WEIGHTS_COLUMN] is not None for row in rows]
    if any(weighted) and not all(weighted):
        raise ValueError(f"some rows of the batch have {WEIGHTS_COLUMN} and some do not")
    weights = [_weights(row, i) for i, row in enumerate(rows)] if rows and all(weighted) else None
    parts = [_row(row, i) for i, row in enumerate(rows)]
    if weights is not None:
        for i, (part, w) in enumerate(zip(parts, weights)):
            if len(w) != len(part[0]):
                raise ValueError(f"row {i} of the batch: {len(part[0])} input_ids but {len(w)} {WEIGHTS_COLUMN}")
            w[part[1] == IGNORE_INDEX] = 0.0  # no weight where nothing is trained (e.g. a sequence start)
        weights = [w for part, w in zip(parts, weights) if len(part[0])]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        raise ValueError("collate_packed_rows: the batch holds no tokens")

    def padded_length(n: int) -> int:
        return n if pad_to_multiple_of is None else -(-n // pad_to_multiple_of) * pad_to_multiple_of

    segments: list[np.ndarray] = []  # sequence lengths over the flattened batch, padding included
    if mode == "flatten":
        columns = [list(c) for c in zip(*(p[:3] for p in parts))]
        segments = [p[3] for p in parts]
        total = sum(len(p[0]) for p in parts)
        extra = padded_length(total) - total
        if extra:
            for column, pad in zip(columns, _padding(extra, pad_token_id)):
                column.append(pad)
            segments.append(np.array([extra]))
        ids, labels, positions = (torch.from_numpy(np.concatenate(c))[None] for c in columns)
        if weights is not None:
            loss_weights = torch.from_numpy(np.concatenate(weights + [np.zeros(extra, np.float32)]))[None]
    else:
        width = padded_length(max(len(p[0]) for p in parts))
        stacked = [[], [], []]
        for *columns, lengths in parts:
            extra = width - len(columns[0])
            segments.append(lengths)
            if extra:
                columns = [np.concatenate([c, pad]) for c, pad in zip(columns, _padding(extra, pad_token_id))]
                segments.append(np.array([extra]))
            for out, column in zip(stacked, columns):
                out.append(column)
        ids, labels, positions = (torch.from_numpy(np.stack(c)) for c in stacked)
        if weights is not None:
            loss_weights = torch.from_numpy(np.stack([np.concatenate([w, np.zeros(width - len(w), np.float32)])
                                                      for w in weights]))
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if weights is not None:
        batch[WEIGHTS_COLUMN] = loss_weights
    if varlen_kwargs or (varlen_kwargs is None and mode == "pad"):
        lengths = np.concatenate(segments)
        cu_seq_lens = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        longest = int(lengths.max())
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
        batch["max_length_q"] = batch["max_length_k"] = longest
    return batch


@dataclasses.dataclass(frozen=True)
class PackedRowsCollator:
    """`collate_packed_rows` with its options bound: pass it as `Trainer(data_collator=PackedRowsCollator())`."""

    mode: str = "flatten"
    pad_to_multiple_of: int | None = None
    varlen_kwargs: bool | None = None  # None: in "pad" mode only
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_packed_rows(rows, **dataclasses.asdict(self))


# -- the rows of Arrow outputs, and each rank's share of them ------------------------------------------


def arrow_files(paths_or_folder: str | Path | Iterable[str | Path], *, split: str = "train") -> list[Path]:
    """The Arrow files of `paths_or_folder`, in order: a file is itself; a folder gives its `<split>-*.arrow`
    shards when it has some (a mix), otherwise all its `*.arrow` files (per-file outputs), sorted by name;
    a list gives those of each of its items, in its order."""
    items = [paths_or_folder] if isinstance(paths_or_folder, (str, Path)) else list(paths_or_folder)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob(f"{split}-*.arrow")) or sorted(path.glob("*.arrow"))
            if not found:
                raise FileNotFoundError(f"{path}: no {split}-*.arrow or *.arrow file in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise FileNotFoundError("no Arrow file given")
    return files


def rank_indices(
    num_rows: int, rank: int, world_size: int, *, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = False
) -> list[int]:
    """The row indices rank `rank` of `world_size` reads in epoch `epoch`: exactly those of
    `torch.utils.data.DistributedSampler(num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
    drop_last=drop_last)` after `set_epoch(epoch)`.

    The order is a permutation seeded with `seed + epoch` (the same on every rank, another each epoch);
    rank r takes every world_size-th index of it from the r-th. When `num_rows` does not divide by
    `world_size`: with `drop_last=False` (DistributedSampler's default) the order is extended with its own
    first indices until it does, so up to world_size - 1 rows are read twice in that epoch; with
    `drop_last=True` its last num_rows % world_size indices are dropped, so up to world_size - 1 rows are
    not read in that epoch (other rows each epoch, as the order changes). Every rank gets the same count.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank} world_size={world_size}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if drop_last and num_rows % world_size:
        per_rank = math.ceil((num_rows - world_size) / world_size)
    else:
        per_rank = math.ceil(num_rows / world_size)
    total = per_rank * world_size
    if shuffle:
        import torch

        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(num_rows, generator=generator).tolist()
    else:
        order = list(range(num_rows))
    if not drop_last:
        missing = total - len(order)
        if missing and order:
            order += (order * math.ceil(missing / len(order)))[:missing]
    else:
        order = order[:total]
    return order[rank:total:world_size]


class PackedRowsDataset:
    """The rows of packed Arrow outputs (`<name>.arrow`, or a mix's `train-*.arrow` shards), memory-mapped.

    `len(ds)` rows; `ds[i]` is a dict of the row's columns as read-only int32 numpy views into the mapped
    files (nothing is loaded into memory beyond the pages a row touches). Rows are numbered across the
    files in the order `arrow_files` gives them. Pickles as its paths (a DataLoader worker maps the files again).

    Outputs written with the `balance_ranks` setting are read without shuffling (`rank_rows(...,
    shuffle=False)`, `DistributedSampler(shuffle=False)`): the writer shuffled their rows and ordered them so
    that each step of world_size x micro_batch rows gives the ranks near-equal attention cost.
    """

    def __init__(self, paths_or_folder: str | Path | Iterable[str | Path], *, split: str = "train"):
        self.paths = arrow_files(paths_or_folder, split=split)
        self._open()

    def _open(self) -> None:
        import pyarrow as pa

        from .core.write.arrays import to_numpy

        self._maps = []
        self._batches: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        starts = [0]
        for path in self.paths:
            source = pa.memory_map(str(path))
            try:  # an Arrow IPC stream (what collate and `datasets` write)
                reader = pa.ipc.open_stream(source)
                batches = iter(reader)
            except pa.ArrowInvalid:  # or an Arrow IPC file
                source.seek(0)
                try:
                    reader = pa.ipc.open_file(source)
                except pa.ArrowInvalid as exc:
                    raise ValueError(f"{path}: not an Arrow stream or file: {exc}") from exc
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            missing = [name for name in PACKED_COLUMNS if name not in reader.schema.names]
            if missing:
                raise ValueError(f"{path}: not packed rows (no {missing} column; columns {reader.schema.names})")
            self._maps.append(source)
            for batch in batches:
                if not batch.num_rows:
                    continue
                columns = {}
                for name in PACKED_COLUMNS:
                    column = batch.column(name)
                    columns[name] = (to_numpy(column.offsets), to_numpy(column.values))
                self._batches.append(columns)
                starts.append(starts[-1] + batch.num_rows)
        self._starts = np.asarray(starts, dtype=np.int64)

    def __getstate__(self) -> dict:
        return {"paths": self.paths}

    def __setstate__(self, state: dict) -> None:
        self.paths = state["paths"]
        self._open()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        which = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[which])
        return {
            name: values[offsets[local] : offsets[local + 1]]
            for name, (offsets, values) in self._batches[which].items()
        }

    def rank_indices(
        self, rank: int, world_size: int, *, seed: int, epoch: int, drop_last: bool = False, shuffle: bool = True
    ) -> list[int]:
        """`rank_indices(len(self), ...)`: this rank's rows of the epoch, in reading order."""
        return rank_indices(len(self), rank, world_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)

    def rank_rows(
        self,
        rank: int,
        world_size: int,
        *,
        seed: int,
        epoch: int,
        start_step: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        shuffle: bool = True,
    ) -> Iterator[dict[str, np.ndarray]]:
        """This rank's rows of epoch `epoch`, from step `start_step` on: the first start_step * batch_size
        rows of this rank's order (those already consumed) are skipped, the rest read in order. A step is
        `batch_size` rows of this rank (with gradient accumulation, count micro-batches, or pass the rows
        of an optimizer step as batch_size); the last step of an epoch may be short.

        shuffle=False reads the rows in file order (rank r: rows r, r + world_size, ...; seed and epoch are
        then unused), as `DistributedSampler(shuffle=False)`: the way to read outputs written with the
        `balance_ranks` setting (world_size x batch_size rows a step), whose rows the writer already
        shuffled and ordered so that every step gives the ranks near-equal attention cost. Shuffling them
        again would undo that balance."""
        if batch_size < 1 or start_step < 0:
            raise ValueError(f"batch_size must be >= 1 and start_step >= 0, got {batch_size} and {start_step}")
        indices = self.rank_indices(rank, world_size, seed=seed, epoch=epoch, drop_last=drop_last, shuffle=shuffle)
        steps = -(-len(indices) // batch_size)  # the last step may be short
        if start_step > steps:
            raise ValueError(
                f"start_step {start_step}: rank {rank} has only {steps} steps of {batch_size} rows in an epoch "
                f"({len(indices)} rows; count the steps of the current epoch only)"
            )
        return (self[i] for i in indices[start_step * batch_size :])


def rank_rows(
    paths_or_folder: str | Path | Iterable[str | Path], rank: int, world_size: int, *, split: str = "train", **options
) -> Iterator[dict[str, np.ndarray]]:
    """`PackedRowsDataset(paths_or_folder, split=split).rank_rows(rank, world_size, **options)`: rank `rank`'s
    rows of an epoch; `options` are that method's (seed, epoch, start_step=0, batch_size=1, drop_last=False,
    shuffle=True; shuffle=False: in file order, for rows written balanced with `balance_ranks`)."""
    return PackedRowsDataset(paths_or_folder, split=split).rank_rows(rank, world_size, **options)


# -- loss weights -----------------------------------------------------------------------------------------


def weighted_loss(logits, labels, loss_weights, denominator=None):
    """Σ w·ℓ / Σ w of a batch: ℓ the next-token cross-entropy (logits at t predict labels at t+1, labels
    unshifted), w the loss weight of the predicted token; `denominator` instead of Σ w (e.g. the Σ w of a
    whole accumulated batch). Tokens with label -100 count for nothing whatever their weight."""
    import torch.nn.functional as F

    targets = labels[..., 1:].reshape(-1)
    weights = loss_weights[..., 1:].reshape(-1).to(torch_float(logits))
    weights = weights * (targets != IGNORE_INDEX)
    losses = F.cross_entropy(logits[..., :-1, :].reshape(targets.numel(), -1).float(), targets,
                             ignore_index=IGNORE_INDEX, reduction="none")
    total = (losses * weights).sum()
    return total / (weights.sum() if denominator is None else denominator)


def torch_float(tensor):
    import torch

    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def _loss_weights_trainer():
    from transformers import Trainer

    class LossWeightsTrainer(Trainer):
        """transformers' `Trainer` for rows with `loss_weights`: the loss is `weighted_loss`, normalised by
        the Σ w of the whole accumulated batch (so gradient accumulation changes nothing). Batches without
        `loss_weights` are trained as `Trainer` does. Keeps the `loss_weights` column when it removes the
        columns its model does not name."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = True  # the loss is normalised over the accumulated batch

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if WEIGHTS_COLUMN not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, WEIGHTS_COLUMN]

        def _get_num_items_in_batch(self, batch_samples, device):
            if not batch_samples or WEIGHTS_COLUMN not in batch_samples[0]:
                self.loss_is_scaled_for_ga = None  # Trainer's own rule
                return super()._get_num_items_in_batch(batch_samples, device)
            self.loss_is_scaled_for_ga = True
            total = sum((batch[WEIGHTS_COLUMN][..., 1:] * (batch["labels"][..., 1:] != IGNORE_INDEX)).sum()
                        for batch in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                total = self.accelerator.gather(total).sum()
            return total

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if WEIGHTS_COLUMN not in inputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs = dict(inputs)
            weights, labels = inputs.pop(WEIGHTS_COLUMN), inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_loss(outputs.logits, labels, weights, num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # ranks' gradients are averaged, Σ w was summed
            return (loss, outputs) if return_outputs else loss

    return LossWeightsTrainer


def __getattr__(name: str):
    """`LossWeightsTrainer` is made on first use: importing this module does not import transformers."""
    if name == "LossWeightsTrainer":
        cls = _loss_weights_trainer()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
