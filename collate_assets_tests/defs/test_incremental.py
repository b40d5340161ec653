"""Materializing an unchanged partition again reuses its spill and keeps its packed files."""

import dagster as dg

from .conftest import copy_demo, make_resources, materialize_partition
from collate_assets.defs import register_partitions


def _mtimes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
            and not p.name.endswith((".manifest.json", ".packed.json"))}


def test_unchanged_partition_is_not_recomputed(tmp_path):
    inputs = copy_demo(tmp_path / "in")
    out = tmp_path / "out"
    resources = make_resources(inputs, str(out))
    with dg.instance_for_test() as instance:
        register_partitions(instance, inputs)
        assert materialize_partition(instance, resources, "demo_small.jsonl").success
        before = _mtimes(out)
        second = materialize_partition(instance, resources, "demo_small.jsonl")
        assert second.success
        assert _mtimes(out) == before  # spill, rejects and every packed file untouched
        logs = [r.user_message for r in instance.all_logs(second.run_id) if not r.is_dagster_event]
        assert any("reusing it" in m for m in logs)
        assert sum("kept as it is" in m for m in logs) == 4
        # Metadata is still complete on the reused materializations.
        [packed] = second.asset_materializations_for_node("packed_arrow")
        assert packed.metadata["rows"].value > 0 and packed.metadata["fill"].value > 0

        # A changed file is tokenized and packed again.
        with open(inputs / "demo_small.jsonl", "a") as f:
            f.write('{"messages": [{"role": "user", "content": "one more"}, {"role": "assistant", "content": "ok"}]}\n')
        third = materialize_partition(instance, resources, "demo_small.jsonl")
        assert third.success
        after = _mtimes(out)
        assert after["_tokenized/demo_small.arrow"] != before["_tokenized/demo_small.arrow"]
        assert after["arrow/demo_small.arrow"] != before["arrow/demo_small.arrow"]
        [tokenized] = third.asset_materializations_for_node("tokenized_conversations")
        assert tokenized.metadata["conversations"].value == 41
