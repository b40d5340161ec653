"""Rows ordered for data-parallel ranks of equal attention cost (core/pack/balance.py, balance_ranks)."""

from __future__ import annotations

import numpy as np
import pytest

from collate_assets.core import CollateSettings, PackStats, file_sha256, read_packed
from collate_assets.core.pack import packing
from collate_assets.core.pack.balance import DEFAULT_WINDOW, LAYOUTS, balance_order, balance_rows, imbalance, row_costs
from collate_assets.core.pack.spill import pack_spill, spill_lengths
from collate_assets.core.settings import parse_balance_ranks

from .test_spill import random_sequences, write_spill

MAX_LENGTH = 512


def realistic_costs(rows: int = 1200, seed: int = 0, max_length: int = 8192) -> np.ndarray:
    """Σ len² of rows packed (best-fit decreasing) from conversation lengths like chat data's (log-normal,
    median ~250 tokens, a long tail up to max_length), in a shuffled order."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(5.5, 1.1, rows * 30), 8, max_length).astype(np.int64)
    items, offsets = packing.pack_flat(lengths, max_length)
    costs = row_costs(lengths, items, offsets)
    return costs[rng.permutation(len(costs))]


def step_loads(costs: np.ndarray, world_size: int, micro_batch: int, layout: str) -> np.ndarray:
    """(steps, ranks) summed costs of the complete steps, computed from the reader's rule directly."""
    group = world_size * micro_batch
    steps = len(costs) // group
    loads = np.zeros((steps, world_size))
    for s in range(steps):
        for r in range(world_size):
            for j in range(micro_batch):
                at = s * group + (j * world_size + r if layout == "sampler" else r * micro_batch + j)
                loads[s, r] += costs[at]
    return loads


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", (0, 1, 5, 16, 17, 100, 1003))
@pytest.mark.parametrize("world_size, micro_batch", ((1, 1), (8, 1), (8, 2), (3, 4)))
def test_the_order_is_a_permutation(n, world_size, micro_batch, layout):
    costs = np.random.default_rng(n).integers(1, 10**7, n)
    order = balance_order(costs, world_size, micro_batch, layout=layout, window=4).order
    assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(n))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world_size, micro_batch", ((8, 1), (8, 2), (4, 4), (64, 1)))
def test_balanced_steps_are_near_equal_on_packed_rows(world_size, micro_batch, layout):
    costs = realistic_costs()
    result = balance_order(costs, world_size, micro_batch, layout=layout)
    before, after = result.report["before"], result.report["after"]
    assert before == imbalance(costs, world_size, micro_batch, layout=layout)
    assert after == imbalance(costs[result.order], world_size, micro_batch, layout=layout)
    assert after["steps"] == before["steps"] == len(costs) // (world_size * micro_batch)
    for figure in ("mean", "worst", "overall"):
        assert 1.0 <= after[figure] <= before[figure]
    assert before["mean"] > 1.5  # shuffled packed rows: the slowest rank is far behind
    assert after["mean"] < (1.1 if micro_batch > 1 else 1.15)
    assert after["overall"] < 1.1


def test_the_figures_are_defined_on_the_ranks_summed_costs():
    # 2 ranks x 2 rows, read as DistributedSampler does: rank 0 rows 0 and 2, rank 1 rows 1 and 3
    costs = np.array([1, 2, 3, 4, 10, 10, 10, 30])
    loads = step_loads(costs, 2, 2, "sampler")
    assert loads.tolist() == [[4, 6], [20, 40]]
    report = imbalance(costs, 2, 2)
    assert report == {"steps": 2, "mean": round((6 / 5 + 40 / 30) / 2, 4), "worst": round(40 / 30, 4),
                      "overall": round(46 / 35, 4)}
    # the trainer's reader: rank 0 rows 0 and 1, rank 1 rows 2 and 3
    assert step_loads(costs, 2, 2, "trainer").tolist() == [[3, 7], [20, 40]]
    assert imbalance(costs, 2, 2, layout="trainer")["worst"] == round(7 / 5, 4)
    assert imbalance(costs[:3], 2, 2) == {"steps": 0, "mean": 1.0, "worst": 1.0, "overall": 1.0}


def test_lpt_within_a_step_and_the_reader_gets_each_rank_its_set():
    costs = np.array([1, 5, 8, 3, 6, 2, 7, 4], dtype=np.int64)  # one step of 2 ranks x 4 rows
    for layout in LAYOUTS:
        order = balance_order(costs, 2, 4, layout=layout).order
        loads = step_loads(costs[order], 2, 4, layout)
        assert loads[0].tolist() == [18, 18]  # LPT: {8, 5, 4, 1} to rank 0, {7, 6, 3, 2} to rank 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_move_within_their_window_only(layout):
    costs = realistic_costs(rows=600, seed=1)
    world_size, micro_batch, window = 8, 2, 5
    order = balance_order(costs, world_size, micro_batch, layout=layout, window=window).order
    span = window * world_size * micro_batch
    full = len(costs) // (world_size * micro_batch) * world_size * micro_batch
    assert (order[:full] // span == np.arange(full) // span).all()
    assert sorted(order[full:].tolist()) == list(range(full, len(costs)))  # the partial group stays last


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_last_partial_group_is_balanced_over_the_slots_the_reader_gives(layout):
    world_size, micro_batch = 4, 3
    costs = np.array([5] * 12 + [100, 1, 1, 1, 90, 2, 2])  # a step, then 7 rows
    order = balance_order(costs, world_size, micro_batch, layout=layout).order
    tail = costs[order][12:]
    loads = np.zeros(world_size)
    for k, cost in enumerate(tail):  # offset k of the partial group
        rank = k % world_size if layout == "sampler" else k // micro_batch
        loads[rank] += cost
    # the big rows on ranks of their own, the 100 on a rank with one slot: the slowest rank is the 100 alone
    assert loads.max() == 100 and sorted(loads.tolist())[-2] <= 92
    result = balance_order(costs, world_size, micro_batch, layout=layout)
    assert result.report["partial_rows"] == 7 and result.report["rows"] == 19


def test_deterministic_and_seeded():
    costs = realistic_costs(rows=400, seed=2)
    a = balance_order(costs, 8, 1, seed=3)
    b = balance_order(costs.copy(), 8, 1, seed=3)
    assert np.array_equal(a.order, b.order) and a.report == b.report
    c = balance_order(costs, 8, 1, seed=4)
    assert not np.array_equal(a.order, c.order)  # the steps of a window in another random order
    assert c.report["after"]["mean"] == a.report["after"]["mean"]  # the same steps, so the same figures
    order, report = balance_rows(costs, 8, 1, seed=3)
    assert np.array_equal(order, a.order) and report == a.report
    assert report["window"] == DEFAULT_WINDOW and report["layout"] == "sampler"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="world_size"):
        balance_order(np.ones(4), 0, 1)
    with pytest.raises(ValueError, match="layout"):
        balance_order(np.ones(4), 2, 1, layout="other")
    with pytest.raises(ValueError, match="costs"):
        balance_order(np.ones((2, 2)), 2, 1)


def test_trainer_layout_is_what_accelerate_deals_to_each_process():
    """transformers' Trainer with train_sampling_strategy="sequential" shards a SequentialSampler's batches
    with accelerate's BatchSamplerShard: the layout "trainer" must be its rule."""
    accelerate_loader = pytest.importorskip("accelerate.data_loader")
    from torch.utils.data import BatchSampler, SequentialSampler

    costs = realistic_costs(rows=300, seed=3)
    world_size, micro_batch = 4, 3
    result = balance_order(costs, world_size, micro_batch, layout="trainer")
    ordered = costs[result.order]
    steps = result.report["after"]["steps"]
    batches = BatchSampler(SequentialSampler(range(len(ordered))), batch_size=micro_batch, drop_last=False)
    loads = np.zeros((steps, world_size))
    for rank in range(world_size):
        shard = accelerate_loader.BatchSamplerShard(batches, num_processes=world_size, process_index=rank,
                                                    split_batches=False, even_batches=True)
        for step, batch in enumerate(list(shard)[:steps]):
            loads[step, rank] = ordered[batch].sum()
    assert np.allclose(loads, step_loads(ordered, world_size, micro_batch, "trainer"))
    ratio = loads.max(axis=1) / loads.mean(axis=1)
    assert round(float(ratio.mean()), 4) == result.report["after"]["mean"]


# -- per-file outputs: the balance_ranks setting -----------------------------------------------------


@pytest.fixture(scope="module")
def spill(tmp_path_factory):
    path = tmp_path_factory.mktemp("balance") / "spill.arrow"
    write_spill(path, random_sequences(1500, seed=5))
    return path


def test_settings_default_to_no_balance_and_keep_the_fingerprints():
    default = CollateSettings()
    assert default.balance_ranks is None and default.balance_shape() is None
    assert "balance_ranks" not in default.output_dict() and "balance_reader" not in default.output_dict()
    assert default.pack_dict() == {} and default.pack_fingerprint() == ""
    balanced = CollateSettings(balance_ranks=" 8X2 ")
    assert balanced.balance_ranks == "8x2" and balanced.balance_shape() == (8, 2)
    assert balanced.fingerprint() == default.fingerprint()  # the spills do not change: tokenizing stays fresh
    assert balanced.pack_dict() == {"balance_ranks": "8x2"} and len(balanced.pack_fingerprint()) == 16
    assert CollateSettings(balance_ranks="off").balance_ranks is None
    assert CollateSettings(balance_reader="trainer").pack_dict() == {}  # the reader alone changes nothing
    assert CollateSettings(balance_ranks="8x2", balance_reader="trainer").pack_dict() == {
        "balance_ranks": "8x2", "balance_reader": "trainer"}
    assert CollateSettings.from_env({"COLLATE_BALANCE_RANKS": "4"}).balance_ranks == "4x1"
    assert parse_balance_ranks("8×2") == (8, 2)
    for bad in ("8x", "x2", "0x1", "8x2x1", "eight"):
        with pytest.raises(ValueError, match="balance_ranks"):
            CollateSettings(balance_ranks=bad)
    with pytest.raises(ValueError, match="balance_reader"):
        CollateSettings(balance_ranks="8x2", balance_reader="random")


def test_the_command_takes_the_options():
    from collate_assets.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["--balance-ranks", "8x2", "--balance-reader", "trainer"])
    settings = settings_from_args(args)
    assert (settings.balance_ranks, settings.balance_reader) == ("8x2", "trainer")


def test_the_packed_code_version_changes_only_when_balancing():
    from collate_assets.defs.assets import PACK_CODE_VERSION, Dataset

    default, balanced = Dataset(CollateSettings()), Dataset(CollateSettings(balance_ranks="8x2"))
    assert default.pack_code_version() == f"{PACK_CODE_VERSION}.s{CollateSettings().fingerprint()[:10]}"  # as before the setting
    assert balanced.pack_code_version() != default.pack_code_version()
    assert Dataset(CollateSettings(balance_ranks="8x1")).pack_code_version() != balanced.pack_code_version()
    assert balanced.tokenize_code_version() == default.tokenize_code_version()


def test_default_outputs_are_the_rows_in_packing_order(spill, tmp_path):
    settings = CollateSettings(max_length=MAX_LENGTH)
    stats = pack_spill(spill, tmp_path / "default.arrow", "arrow", settings)
    off = pack_spill(spill, tmp_path / "off.arrow", "arrow", settings.replace(balance_ranks="off"))
    assert file_sha256(tmp_path / "default.arrow") == file_sha256(tmp_path / "off.arrow")
    assert stats.balance is None and "balance" not in stats.to_dict()
    assert off.to_dict().keys() == stats.to_dict().keys()
    lengths = spill_lengths(spill)
    items, offsets = packing.pack_flat(lengths, MAX_LENGTH)
    rows = list(read_packed(tmp_path / "default.arrow", "arrow", numpy=True))
    assert [r["seq_lengths"].tolist() for r in rows] == [lengths[items[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", ("4x1", "4x2", "3x4"))
def test_a_balanced_output_read_unshuffled_gives_the_reported_steps(spill, tmp_path, shape, layout):
    from collate_assets.training import PackedRowsDataset, rank_rows

    world_size, micro_batch = parse_balance_ranks(shape)
    settings = CollateSettings(max_length=MAX_LENGTH, balance_ranks=shape, balance_reader=layout)
    path = tmp_path / "balanced.arrow"
    stats = pack_spill(spill, path, "arrow", settings)
    report = stats.balance
    assert report["world_size"] == world_size and report["micro_batch"] == micro_batch and report["layout"] == layout
    assert PackStats.from_dict(stats.to_dict()).balance == report
    # the same rows as the default output, in another order
    default = tmp_path / "default.arrow"
    pack_spill(spill, default, "arrow", CollateSettings(max_length=MAX_LENGTH))
    key = lambda row: tuple(row["input_ids"].tolist())  # noqa: E731
    mine, theirs = list(read_packed(path, "arrow", numpy=True)), list(read_packed(default, "arrow", numpy=True))
    assert sorted(map(key, mine)) == sorted(map(key, theirs)) and list(map(key, mine)) != list(map(key, theirs))
    assert stats.rows == len(mine) and stats.tokens == sum(len(r["input_ids"]) for r in mine)
    # every rank's steps, read as a trainer would without shuffling
    cost = lambda row: int((row["seq_lengths"].astype(np.int64) ** 2).sum())  # noqa: E731
    steps = report["after"]["steps"]
    loads = np.zeros((steps, world_size))
    if layout == "sampler":
        for rank in range(world_size):
            rows = list(rank_rows(path, rank, world_size, seed=0, epoch=0, batch_size=micro_batch, shuffle=False))
            for step in range(steps):
                loads[step, rank] = sum(cost(r) for r in rows[step * micro_batch:(step + 1) * micro_batch])
    else:
        rows = PackedRowsDataset(path)
        for step in range(steps):
            for rank in range(world_size):
                first = (step * world_size + rank) * micro_batch
                loads[step, rank] = sum(cost(rows[i]) for i in range(first, first + micro_batch))
    ratio = loads.max(axis=1) / loads.mean(axis=1)
    assert round(float(ratio.mean()), 4) == report["after"]["mean"]
    assert round(float(ratio.max()), 4) == report["after"]["worst"]
    assert report["after"]["mean"] <= report["before"]["mean"]
    # the writer shuffled the rows: they are not in packing order (longest sequences first)
    first_lengths = [int(r["seq_lengths"].max()) for r in mine]
    assert first_lengths != sorted(first_lengths, reverse=True)
    # deterministic: the same bytes again
    again = tmp_path / "again.arrow"
    pack_spill(spill, again, "arrow", settings)
    assert file_sha256(again) == file_sha256(path)


def test_old_pack_stats_still_load():
    old = {"output": "x.arrow", "format": "arrow", "max_length": 8, "packing": "bfd", "rows": 1}
    stats = PackStats.from_dict(old)
    assert stats.balance is None and stats.to_dict()["rows"] == 1


def test_the_command_summary_shows_the_balance():
    from collate_assets.cli import balance_line

    report = balance_order(realistic_costs(rows=200), 8, 2).report
    line = balance_line(report)
    assert line.startswith("rank balance 8x2 (sampler") and f"{report['after']['mean']:.3f}" in line
