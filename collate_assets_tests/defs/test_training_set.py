"""The training_set asset of a mix: two datasets mixed from their tokenized partitions, with blocking
checks and per-source metadata; a file added to one source re-tokenizes that file alone, then the mix."""

import json
import shutil
import textwrap

import dagster as dg
import pytest

from collate_assets.core.pack.mix import MANIFEST_NAME
from collate_assets.defs.assets import Dataset
from collate_assets.defs.component import load_datasets
from collate_assets.defs.dataset import build_dataset_defs
from collate_assets.defs.mix import MIX_CHECKS, MixDefinition, build_mix_defs
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

from .helpers import QUIET, demo_settings, instance_in_memory, sensor_tick

MIX = dg.AssetKey(["mix", "training_set"])


def _run(defs, instance, asset: dg.AssetKey, partition: str | None = None):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={asset})
    return job.execute_in_process(instance=instance, run_config=QUIET, partition_key=partition, raise_on_error=False)


def test_two_datasets_mix_into_one_training_set_and_a_new_file_reruns_only_itself_and_the_mix(tmp_path):
    datasets = {}
    for name, files in (("a", ["demo.jsonl"]), ("b", ["demo_small.jsonl"])):
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            shutil.copyfile(DEMO_INPUT_DIR / file, folder / file)
        datasets[name] = Dataset(demo_settings(folder, tmp_path / f"out_{name}", formats=("arrow",)), name)
    mix = MixDefinition(name="mix", output_dir=str(tmp_path / "mix"), sources=(("a", 1.0, None), ("b", 2.0, None)), seed=3,
                        validation_share=0.1, shard_rows=16)
    defs = dg.Definitions.merge(*(build_dataset_defs(d.settings, d.name) for d in datasets.values()), build_mix_defs(mix))
    tokenized = {name: d.key("tokenized_conversations") for name, d in datasets.items()}
    # In memory (see instance_in_memory): the automation evaluations below read the dynamic partitions
    # some 3,000 times, 13 of this test's 19 s on disk.
    with instance_in_memory() as instance:
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        for dataset in datasets.values():
            sensor_tick(instance, dataset)
        for name, dataset in datasets.items():
            for key in instance.get_dynamic_partitions(dataset.partitions.name):
                assert _run(defs, instance, tokenized[name], key).success

        result = _run(defs, instance, MIX)
        assert result.success
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(evaluations) == set(MIX_CHECKS) and all(e.passed for e in evaluations.values())
        [materialization] = [e.materialization for e in result.get_asset_materialization_events()]
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert meta["tokens_after_weighting__b"] >= 2 * meta["tokens_before_weighting__b"] > 0
        assert meta["train_rows"] > 0 and meta["validation_rows"] > 0 and 0.9 < meta["train_fill"] <= 1
        sources = {r.data["source"]: r.data for r in materialization.metadata["sources_table"].records}  # a table in the UI
        assert sources["a"]["weight"] == 1 and sources["b"]["train_tokens"] == meta["tokens_after_weighting__b"]
        assert {r.data["split"] for r in materialization.metadata["splits_table"].records} == {"train", "validation"}
        manifest = json.loads((tmp_path / "mix" / MANIFEST_NAME).read_text())
        assert [f["partition"] for f in manifest["sources"]["a"]["fingerprints"]] == ["demo.jsonl"]

        # a new file in b: automation tokenizes it alone, then (its parents all there) the mix
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        shutil.copyfile(DEMO_INPUT_DIR / "demo.jsonl", tmp_path / "b" / "more.jsonl")
        sensor_tick(instance, datasets["b"])
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert set(second.get_requested_partitions(tokenized["b"])) == {"more.jsonl"}
        assert not second.get_requested_partitions(tokenized["a"])
        assert MIX not in _requested_keys(second)  # a parent partition is missing: not yet
        assert _run(defs, instance, tokenized["b"], "more.jsonl").success
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert MIX in _requested_keys(third)
        assert not third.get_requested_partitions(tokenized["a"]) and not third.get_requested_partitions(tokenized["b"])
        assert _run(defs, instance, MIX).success
        after = json.loads((tmp_path / "mix" / MANIFEST_NAME).read_text())
        # more.jsonl repeats a's file: every conversation of it is a duplicate
        assert after["sources"]["b"]["duplicates_dropped"] >= 300
        assert after["splits"]["train"]["tokens"] == manifest["splits"]["train"]["tokens"]


def _requested_keys(result) -> set:
    return {key for key in (MIX,) if result.get_num_requested(key)}


def test_a_mix_yaml_loads_and_an_unknown_source_is_named(tmp_path):
    for name in ("a", "b"):
        folder = tmp_path / "datasets" / name
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(textwrap.dedent(f"""\
            type: collate_assets.defs.component.CollateDataset
            attributes:
              input_dir: {DEMO_INPUT_DIR}
              tokenizer: {DEMO_TOKENIZER_DIR}
              output_dir: {tmp_path / ('out_' + name)}
            """))
    mix = tmp_path / "datasets" / "chat_mix"
    mix.mkdir()
    (mix / "defs.yaml").write_text(textwrap.dedent("""\
        type: collate_assets.defs.component.CollateMix
        attributes:
          sources:
            - {dataset: a, weight: 1}
            - {dataset: b, weight: 0.5}
          validation_share: 0.05
          seed: 11
        """))
    defs = load_datasets(tmp_path / "datasets")
    node = defs.resolve_asset_graph().get(dg.AssetKey(["chat_mix", "training_set"]))
    assert node.group_name == "chat_mix"
    assert {key.to_user_string() for key in node.parent_keys} == {"a/tokenized_conversations", "b/tokenized_conversations"}
    (mix / "defs.yaml").write_text((mix / "defs.yaml").read_text().replace("dataset: b", "dataset: nope"))
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="no dataset named 'nope'"):
        load_datasets(tmp_path / "datasets")
