"""The training_set asset of a mix: two datasets mixed from their tokenized partitions, with blocking
checks and per-source metadata; a file added to one source re-tokenizes that file alone, then the mix.
The mix follows the folders: a file added, deleted or edited and not caught up with fails it, untouched."""

import json
import os
import shutil
import textwrap

import dagster as dg
import pytest

from collate_assets.core.pack.mix import MANIFEST_NAME
from collate_assets.defs.assets import Dataset
from collate_assets.defs.component import load_datasets
from collate_assets.defs.dataset import build_dataset_defs
from collate_assets.defs.mix import MIX_CHECKS, MixDefinition, MixSourceDefinition, build_mix_defs
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
        assert set(evaluations) == set(MIX_CHECKS) - {"decontamination"} and all(e.passed for e in evaluations.values())
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


# The mix follows the folders: tiny files (a few demo conversations each) keep these tests quick.
DEMO_LINES = (DEMO_INPUT_DIR / "demo.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)


def _write(path, first: int, count: int = 3) -> None:
    path.write_text("".join(DEMO_LINES[first:first + count]), encoding="utf-8")


def _tiny_sources(tmp_path, layout: dict[str, dict[str, int]]):
    """Datasets a, b, ... of tiny files (name -> first demo line), each registered by its sensor and
    tokenized, and a mix of them; (datasets, defs)."""
    datasets = {}
    for name, files in layout.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, first in files.items():
            _write(folder / file, first)
        datasets[name] = Dataset(demo_settings(folder, tmp_path / f"out_{name}", formats=("arrow",)), name)
    mix = MixDefinition(name="mix", output_dir=str(tmp_path / "mix"), sources=tuple((name, 1.0, None) for name in layout))
    defs = dg.Definitions.merge(*(build_dataset_defs(d.settings, d.name) for d in datasets.values()), build_mix_defs(mix))
    return datasets, defs


def _tokenize(defs, instance, dataset, *keys):
    for key in keys or instance.get_dynamic_partitions(dataset.partitions.name):
        assert _run(defs, instance, dataset.key("tokenized_conversations"), key).success


def _mix_folder(tmp_path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((tmp_path / "mix").iterdir())}


def _fails_untouched(defs, instance, tmp_path, *expected: str) -> str:
    """The mix fails (no materialization) with a reason holding every text of `expected`, and its folder
    (shards and training_set.json) stays byte for byte as it was."""
    before = _mix_folder(tmp_path)
    result = _run(defs, instance, MIX)
    assert not result.success and not result.get_asset_materialization_events()
    [failure] = [e.step_failure_data for e in result.all_events if e.is_step_failure]
    reason = failure.user_failure_data.description
    for text in expected:
        assert text in reason, reason
    assert _mix_folder(tmp_path) == before
    return reason


def test_a_mix_fails_while_a_source_folder_differs_from_its_partitions_and_builds_once_they_catch_up(tmp_path):
    datasets, defs = _tiny_sources(tmp_path, {"a": {"one.jsonl": 0, "two.jsonl": 3}, "b": {"three.jsonl": 6}})
    with instance_in_memory() as instance:
        for dataset in datasets.values():
            sensor_tick(instance, dataset)
            _tokenize(defs, instance, dataset)
        assert _run(defs, instance, MIX).success

        # deleted after it was tokenized: its partition and spill are still there
        (tmp_path / "a" / "two.jsonl").unlink()
        _fails_untouched(defs, instance, tmp_path, "source 'a'", "gone from the folder: two.jsonl", "a__input_files_sensor")
        sensor_tick(instance, datasets["a"])  # drops its partition
        assert _run(defs, instance, MIX).success
        assert [f["partition"] for f in _manifest(tmp_path)["sources"]["a"]["fingerprints"]] == ["one.jsonl"]

        # added, no sensor has seen it: it is no partition yet
        _write(tmp_path / "a" / "four.jsonl", 9)
        _fails_untouched(defs, instance, tmp_path, "new, not partitions yet: four.jsonl", "collate --dataset a")
        sensor_tick(instance, datasets["a"])
        _fails_untouched(defs, instance, tmp_path, "not tokenized with the current settings: four.jsonl",
                         "a/tokenized_conversations")
        _tokenize(defs, instance, datasets["a"], "four.jsonl")
        assert _run(defs, instance, MIX).success
        assert {f["partition"] for f in _manifest(tmp_path)["sources"]["a"]["fingerprints"]} == {"one.jsonl", "four.jsonl"}

        # touched, same bytes: nothing to do
        os.utime(tmp_path / "b" / "three.jsonl", ns=(1, 1))
        assert _run(defs, instance, MIX).success
        # edited and not tokenized again: read (no observation of it yet), then as the sensor observed it
        _write(tmp_path / "b" / "three.jsonl", 12, count=4)
        reason = _fails_untouched(defs, instance, tmp_path, "source 'b'", "edited since they were tokenized: three.jsonl")
        assert "source 'a'" not in reason
        sensor_tick(instance, datasets["b"])
        _fails_untouched(defs, instance, tmp_path, "edited since they were tokenized: three.jsonl", "b/tokenized_conversations")
        _tokenize(defs, instance, datasets["b"], "three.jsonl")
        assert _run(defs, instance, MIX).success
        assert _manifest(tmp_path)["sources"]["b"]["conversations"] == 4


def test_the_automation_holds_the_mix_while_an_observed_edit_is_not_tokenized_yet(tmp_path):
    datasets, defs = _tiny_sources(tmp_path, {"a": {"one.jsonl": 0}, "b": {"three.jsonl": 6}})
    tokenized = {name: d.key("tokenized_conversations") for name, d in datasets.items()}
    with instance_in_memory() as instance:
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        for dataset in datasets.values():
            sensor_tick(instance, dataset)
            _tokenize(defs, instance, dataset)
        assert _run(defs, instance, MIX).success
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)

        _write(tmp_path / "a" / "one.jsonl", 12)  # an edit in a, observed; a new file in b, tokenized
        _write(tmp_path / "b" / "more.jsonl", 15)
        for dataset in datasets.values():
            sensor_tick(instance, dataset)
        _tokenize(defs, instance, datasets["b"], "more.jsonl")
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert set(second.get_requested_partitions(tokenized["a"])) == {"one.jsonl"}
        assert MIX not in _requested_keys(second)  # b was updated, but a's edit is not tokenized yet
        _tokenize(defs, instance, datasets["a"], "one.jsonl")
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert MIX in _requested_keys(third)
        assert _run(defs, instance, MIX).success


def _manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "mix" / MANIFEST_NAME).read_text())


def test_a_tokens_budget_over_what_a_source_has_fails_budgets_met_and_an_absent_source_is_no_dependency(tmp_path):
    datasets = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", folder / "demo_small.jsonl")
        datasets[name] = Dataset(demo_settings(folder, tmp_path / f"out_{name}", formats=("arrow",)), name)
    # a: a budget of 10 M trained tokens, twice what it has at most: short; b: weight 0, left out
    mix = MixDefinition(name="mix", output_dir=str(tmp_path / "mix"), budget_by="all",
                        sources=(MixSourceDefinition("a", tokens=10_000_000, max_repeats=2), MixSourceDefinition("b", weight=0)))
    defs = dg.Definitions.merge(*(build_dataset_defs(d.settings, d.name) for d in datasets.values()), build_mix_defs(mix))
    node = defs.resolve_asset_graph().get(MIX)
    assert {key.to_user_string() for key in node.parent_keys} == {"a/tokenized_conversations"}
    assert "b (absent)" in node.description and "a (tokens 10,000,000, max_repeats 2)" in node.description
    with instance_in_memory() as instance:
        sensor_tick(instance, datasets["a"])  # b's files are never registered nor tokenized: it is not read
        for key in instance.get_dynamic_partitions(datasets["a"].partitions.name):
            assert _run(defs, instance, datasets["a"].key("tokenized_conversations"), key).success
        result = _run(defs, instance, MIX)
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(evaluations) == set(MIX_CHECKS) - {"decontamination"}  # (only when decontaminate is given)
        assert not evaluations["budgets_met"].passed
        assert all(e.passed for name, e in evaluations.items() if name != "budgets_met")
        [materialization] = [e.materialization for e in result.get_asset_materialization_events()]
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert meta["budget_tokens_asked__a"] == 10_000_000
        assert meta["budget_tokens_got__a"] == meta["tokens_after_weighting__a"] == 2 * meta["tokens_before_weighting__a"]
        assert meta["share_got__a"] == 1.0 and meta["budget_tokens_got__b"] == 0
        assert meta["duplicates_dropped__a"] == meta["duplicates_identical_after_truncation__a"] == 0
        sources = {r.data["source"]: r.data for r in materialization.metadata["sources_table"].records}
        assert sources["a"]["asked"] == "tokens 10,000,000, max_repeats 2" and sources["a"]["budget_met"] is False
        assert sources["b"]["asked"] == "absent"
        manifest = json.loads((tmp_path / "mix" / MANIFEST_NAME).read_text())
        assert manifest["sources"]["b"]["absent"] and manifest["settings"]["budget_by"] == "all"


@pytest.mark.parametrize("source, message", [
    ("{dataset: a, weight: 2, tokens: 1000}", "gives weight and tokens: give one of weight, ratio or tokens"),
    ("{dataset: a, weight: 2, max_repeats: 3}", "max_repeats without ratio or tokens"),
    ("{dataset: a, ratio: 0.5, max_repeats: 0.5}", "max_repeats of 'a' must be a number >= 1"),
    ("{dataset: a, tokens: 0}", "every source is left out"),
    ("{dataset: a}\nnear_duplicates: 1.5", "near_duplicates must be a Jaccard threshold"),
    ("{dataset: a}\nbalance_ranks: 8y2", "balance_ranks must be WORLD_SIZExMICRO_BATCH"),
])
def test_mix_budgets_in_yaml_are_checked(tmp_path, source, message):
    from collate_assets.defs.component import CollateMix

    import yaml

    first, _, rest = source.partition("\n")
    attributes = {"sources": [yaml.safe_load(first)], **(yaml.safe_load(rest) if rest else {})}
    with pytest.raises(Exception, match=message):
        CollateMix.model_validate(attributes)
    mix = CollateMix.model_validate({"sources": [{"dataset": "a", "tokens": 1000, "max_repeats": 2},
                                                 {"dataset": "b"}], "budget_by": "all"}).mix_definition(tmp_path)
    assert mix.sources == (MixSourceDefinition("a", 1.0, None, 1000, 2), MixSourceDefinition("b", 1.0))
    assert mix.budget_by == "all"
    mix = CollateMix.model_validate({"sources": [{"dataset": "a"}], "decontaminate": ["evals", "/abs/more.jsonl"],
                                     "near_duplicates": 0.85, "balance_ranks": "8x2"}).mix_definition(tmp_path)
    assert mix.decontaminate == (str(tmp_path / "evals"), "/abs/more.jsonl")  # relative to the defs.yaml
    settings = mix.mix_settings(1024)
    assert (settings.near_duplicates, settings.balance_ranks, settings.decontaminate_n) == (0.85, "8x2", 13)


def test_a_mix_decontaminated_and_near_deduplicated_through_dagster_reports_both_and_blocks_over_the_share(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", folder / "demo_small.jsonl")
    record = json.loads((folder / "demo_small.jsonl").read_text(encoding="utf-8").splitlines()[0])
    answer = next(m["value"] for m in record["conversations"] if m["from"] == "gpt")
    assert len(answer.split()) >= 13
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "eval.jsonl").write_text(json.dumps({"prompt": "?", "answer": answer}) + "\n", encoding="utf-8")
    dataset = Dataset(demo_settings(folder, tmp_path / "out_a", formats=("arrow",)), "a")
    mix = MixDefinition(name="mix", output_dir=str(tmp_path / "mix"), sources=(MixSourceDefinition("a"),),
                        decontaminate=(str(tmp_path / "evals"),), max_contaminated_share=0.0, near_duplicates=0.9,
                        balance_ranks="2x1")
    defs = dg.Definitions.merge(build_dataset_defs(dataset.settings, "a"), build_mix_defs(mix))
    with instance_in_memory() as instance:
        sensor_tick(instance, dataset)
        _tokenize(defs, instance, dataset)
        result = _run(defs, instance, MIX)
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(evaluations) == set(MIX_CHECKS)
        assert not evaluations["decontamination"].passed  # above the share asked (0): blocking
        assert all(e.passed for name, e in evaluations.items() if name != "decontamination")
        [materialization] = [e.materialization for e in result.get_asset_materialization_events()]
        meta = {k: v.value for k, v in materialization.metadata.items()}
        assert meta["contaminated"] >= 1 and meta["decontamination"]["examples"][0]["line"] == 1
        assert meta["near_duplicates"]["threshold"] == 0.9 and meta["near_duplicates_dropped"] >= 0
        assert meta["rank_imbalance_after"] <= meta["rank_imbalance_before"]
        assert meta["decontamination_seconds"] >= 0 and meta["near_duplicates_seconds"] >= 0
        manifest = _manifest(tmp_path)
        assert manifest["settings"]["decontaminate"] == [str(tmp_path / "evals")]
        assert manifest["sources"]["a"]["contaminated"] == meta["contaminated"]
