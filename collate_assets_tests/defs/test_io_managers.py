"""The packed IO managers on universal_pathlib locations: memory:// (fsspec) and file:// URLs."""

import uuid

import dagster as dg
import fsspec
import pytest
from upath import UPath

from collate_assets.core import EXTENSIONS, read_packed
from collate_assets.defs.assets import packed_parquet, tokenized_conversations
from collate_assets.defs.checks import PACKED_CHECKS
from collate_assets.defs.io_managers import PackedFileIOManager, PackRequest, SpillIOManager, local_copy
from collate_assets.defs.lineage import packed_lineage
from collate_assets.defs.partitions import INPUT_FILES
from collate_assets.defs.resources import CollatePaths

from .conftest import make_resources

KEY = "demo_small.jsonl"


@pytest.fixture
def memory_root():
    root = f"memory://collate-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.removeprefix("memory://")):
        fs.rm(root.removeprefix("memory://"), recursive=True)


def spill_for(collated):
    paths = CollatePaths(input_dir=str(collated.input_dir), output_dir=str(collated.output_dir))
    context = dg.build_input_context(asset_key=dg.AssetKey("tokenized_conversations"), partition_key=KEY)
    return SpillIOManager(paths).load_input(context)


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_handle_output_writes_the_layout_on_memory_and_load_input_finds_it(collated, memory_root, fmt):
    spill = spill_for(collated)
    paths = CollatePaths(input_dir=str(collated.input_dir), output_dir=f"{memory_root}/out")
    manager = PackedFileIOManager(paths, fmt)
    key = dg.AssetKey(f"packed_{fmt}")
    out_context = dg.build_output_context(asset_key=key, partition_key=KEY)
    request = PackRequest(spill, fmt, spill.collate_settings(), packed_lineage(spill.lineage, fmt))
    manager.handle_output(out_context, request)

    dest = UPath(f"{memory_root}/out/{fmt}/demo_small{EXTENSIONS[fmt]}")
    assert dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # nothing staged beside it
    metadata = {k: getattr(v, "value", v) for k, v in out_context.get_logged_metadata().items()}
    assert metadata["dagster/uri"] == str(dest)
    assert metadata["rows"] > 0 and 0 < metadata["fill"] <= 1

    loaded = manager.load_input(dg.build_input_context(asset_key=key, partition_key=KEY))
    assert str(loaded) == str(dest)
    local = collated.output_dir / fmt / f"demo_small{EXTENSIONS[fmt]}"
    with local_copy(loaded) as path:
        assert list(read_packed(path, fmt)) == list(read_packed(local, fmt))


def test_file_url_output_is_written_locally(collated, tmp_path):
    spill = spill_for(collated)
    paths = CollatePaths(input_dir=str(collated.input_dir), output_dir=f"file://{tmp_path}")
    manager = PackedFileIOManager(paths, "arrow")
    context = dg.build_output_context(asset_key=dg.AssetKey("packed_arrow"), partition_key=KEY)
    manager.handle_output(context, PackRequest(spill, "arrow", spill.collate_settings(), "x"))
    assert (tmp_path / "arrow" / "demo_small.arrow").is_file()
    assert sorted(p.name for p in (tmp_path / "arrow").iterdir()) == ["demo_small.arrow"]


def test_load_input_of_a_missing_output_fails_clearly(collated, memory_root):
    paths = CollatePaths(input_dir=str(collated.input_dir), output_dir=f"{memory_root}/empty")
    with pytest.raises(dg.Failure, match="materialize packed_jsonl"):
        PackedFileIOManager(paths, "jsonl").load_input(
            dg.build_input_context(asset_key=dg.AssetKey("packed_jsonl"), partition_key=KEY)
        )


def test_materialize_to_memory_runs_the_blocking_checks(collated, memory_root):
    """packed_parquet from the existing spill to memory://, with its checks reading it back."""
    resources = make_resources(
        collated.input_dir, f"{memory_root}/out", spill_dir=str(collated.output_dir / "_tokenized")
    )
    checks = next(c for c in PACKED_CHECKS if dg.AssetKey("packed_parquet") in {k.asset_key for k in c.check_keys})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(INPUT_FILES.name, [KEY])
        result = dg.materialize(
            [tokenized_conversations.to_source_assets()[0], packed_parquet, checks],
            instance=instance,
            partition_key=KEY,
            resources=resources,
        )
    assert result.success
    (materialization,) = [e.materialization for e in result.get_asset_materialization_events()]
    assert materialization.metadata["dagster/uri"].value == f"{memory_root}/out/parquet/demo_small.parquet"
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 4 and all(e.passed for e in evaluations)
    assert UPath(f"{memory_root}/out/parquet/demo_small.parquet").exists()
