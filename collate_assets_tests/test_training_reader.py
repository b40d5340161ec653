"""Each data-parallel rank's rows of packed Arrow outputs (`collate_assets.training`): a mix's
`train-*.arrow` shards or per-file outputs, memory-mapped; a seeded order shared by every rank, a
disjoint share per rank (DistributedSampler's, remainder included), another order each epoch, and a
resume at step k that reads exactly the rows a run from the start reads after step k."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # CI installs torch ([test] extra)
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from collate_assets.core import CollateSettings, collate_file, load_tokenizer, read_packed, tokenize_file  # noqa: E402
from collate_assets.core.pack.mix import MixSettings, MixSource, build_mix  # noqa: E402
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR  # noqa: E402
from collate_assets.training import (  # noqa: E402
    PackedRowsCollator,
    PackedRowsDataset,
    arrow_files,
    rank_indices,
    rank_rows,
)

MAX_LENGTH = 512
SHARD_ROWS = 7  # several train shards, the last one short


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A mix of the two demo files (train shards and validation shards) and their per-file outputs."""
    folder = tmp_path_factory.mktemp("training-reader")
    tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
    settings = CollateSettings(max_length=MAX_LENGTH, workers=1)
    sources = []
    for name in ("demo", "demo_small"):
        tokenize_file(DEMO_INPUT_DIR / f"{name}.jsonl", folder / f"{name}.spill.arrow", tokenizer, settings)
        sources.append(MixSource(name, 1.0, [folder / f"{name}.spill.arrow"]))
        collate_file(DEMO_INPUT_DIR / f"{name}.jsonl", folder / "per_file" / f"{name}.arrow", tokenizer, settings, "arrow")
    build_mix(sources, folder / "mix", MixSettings(max_length=MAX_LENGTH, seed=3, validation_share=0.1, shard_rows=SHARD_ROWS))
    return folder


def batched(items, size):
    """itertools.batched (Python 3.12) for 3.11."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def key(row) -> bytes:
    """A row's identity: its tokens and labels."""
    return np.asarray(row["input_ids"], np.int32).tobytes() + b"|" + np.asarray(row["labels"], np.int32).tobytes()


def test_a_mix_folder_reads_its_train_shards_memory_mapped(outputs):
    mix = outputs / "mix"
    shards = sorted(mix.glob("train-*.arrow"))
    assert len(shards) > 2 and arrow_files(mix) == shards
    assert arrow_files(mix, split="validation") == sorted(mix.glob("validation-*.arrow"))
    ds = PackedRowsDataset(mix)
    expected = [row for path in shards for row in read_packed(path, "arrow")]
    assert len(ds) == len(expected) > 20
    for i, row in enumerate(expected):
        got = ds[i]
        assert set(got) == {"input_ids", "labels", "position_ids", "seq_lengths"}
        assert all(got[k].tolist() == row[k] for k in row)
    first = ds[0]["input_ids"]
    assert not first.flags.owndata and not first.flags.writeable  # a view into the mapped file, not a copy
    assert ds[-1]["input_ids"].tolist() == expected[-1]["input_ids"]
    with pytest.raises(IndexError):
        ds[len(ds)]
    copy = pickle.loads(pickle.dumps(ds))  # a DataLoader worker: the paths travel, the rows do not
    assert len(pickle.dumps(ds)) < 4096 and len(copy) == len(ds) and key(copy[5]) == key(ds[5])
    # per-file outputs: a folder of them, or a list of files and folders, in the order given
    per_file = PackedRowsDataset(outputs / "per_file")
    both = PackedRowsDataset([outputs / "per_file" / "demo_small.arrow", outputs / "per_file" / "demo.arrow"])
    per_file_rows = sum(1 for p in (outputs / "per_file").glob("*.arrow") for _ in read_packed(p, "arrow"))
    assert len(per_file) == len(both) == per_file_rows
    assert key(both[0]) == key(next(read_packed(outputs / "per_file" / "demo_small.arrow", "arrow")))
    with pytest.raises(ValueError, match="not packed rows"):
        PackedRowsDataset(outputs / "demo.spill.arrow")  # a tokenized spill, not an output


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True], ids=["pad-with-repeats", "drop-last"])
def test_ranks_share_an_epoch_like_distributed_sampler(outputs, world_size, drop_last):
    ds = PackedRowsDataset(outputs / "mix")
    n = len(ds)
    assert n % 3 and n % 4  # a remainder for world sizes 3 and 4 (checked below as well as 2)
    for epoch in (0, 1):
        shares = [ds.rank_indices(rank, world_size, seed=11, epoch=epoch, drop_last=drop_last) for rank in range(world_size)]
        for rank, share in enumerate(shares):  # exactly DistributedSampler's share
            sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=11,
                                         drop_last=drop_last)
            sampler.set_epoch(epoch)
            assert share == list(sampler)
        assert len({len(s) for s in shares}) == 1  # every rank takes as many steps
        everything = [i for s in shares for i in s]
        remainder = n % world_size
        if drop_last:  # disjoint; the last `remainder` rows of this epoch's order are left out
            assert len(set(everything)) == len(everything) == n - remainder
        else:  # complete; the order is topped up with its own first rows, read twice
            assert set(everything) == set(range(n))
            assert len(everything) == n + (world_size - remainder) % world_size
        # rank r reads the r-th, (r + world_size)-th, ... row of the epoch's order, the same on every rank
        order = rank_indices(n, 0, 1, seed=11, epoch=epoch)
        interleaved = [i for step in itertools.zip_longest(*shares) for i in step if i is not None]
        assert interleaved[: n - remainder] == order[: n - remainder]


def test_the_order_is_seeded_and_changes_every_epoch(outputs):
    n = len(PackedRowsDataset(outputs / "mix"))
    orders = {(seed, epoch): rank_indices(n, 0, 1, seed=seed, epoch=epoch) for seed in (0, 1) for epoch in (0, 1, 2)}
    assert orders[(0, 0)] == rank_indices(n, 0, 1, seed=0, epoch=0)  # deterministic
    assert sorted(orders[(0, 0)]) == list(range(n))
    assert orders[(0, 0)] != list(range(n))
    assert len({tuple(orders[(0, epoch)]) for epoch in (0, 1, 2)}) == 3  # another order every epoch
    # Like DistributedSampler, the generator is seeded with seed + epoch: seed 1's epoch 0 is seed 0's epoch 1.
    assert orders[(0, 1)] == orders[(1, 0)] and orders[(0, 2)] == orders[(1, 1)]
    assert orders[(1, 2)] != orders[(0, 2)]


@pytest.mark.parametrize("world_size, batch_size", [(1, 3), (3, 2), (4, 1)])
def test_resuming_at_step_k_reads_what_the_run_reads_after_step_k(outputs, world_size, batch_size):
    folder = outputs / "mix"
    for rank in range(world_size):
        whole = [key(r) for r in rank_rows(folder, rank, world_size, seed=5, epoch=2, batch_size=batch_size)]
        steps = -(-len(whole) // batch_size)
        for k in range(steps + 1):
            resumed = rank_rows(folder, rank, world_size, seed=5, epoch=2, start_step=k, batch_size=batch_size)
            resumed = [key(r) for r in resumed]
            assert resumed == whole[k * batch_size :]
        with pytest.raises(ValueError, match="start_step"):
            rank_rows(folder, rank, world_size, seed=5, epoch=2, start_step=steps + 1, batch_size=batch_size)


def test_a_dataloader_with_distributedsampler_reads_the_same_batches(outputs):
    """The reader is also a map-style dataset: DataLoader + DistributedSampler + our collator, workers included."""
    ds = PackedRowsDataset(outputs / "mix")
    collator = PackedRowsCollator()
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler.set_epoch(1)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collator, num_workers=1)
    ours = [collator(batch) for batch in batched(rank_rows(outputs / "mix", 1, 2, seed=0, epoch=1), 4)]
    theirs = list(loader)
    assert len(ours) == len(theirs) > 1
    for a, b in zip(ours, theirs):
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "position_ids"))
