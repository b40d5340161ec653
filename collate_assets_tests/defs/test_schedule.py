"""nightly_collate: requests exactly the partitions whose outputs are missing or out of date."""

import dagster as dg

from collate_assets.defs import register_partitions
from collate_assets.defs.resources import CollatePaths, PackingSettings, TokenizerResource
from collate_assets.defs.schedules import nightly_collate
from collate_assets.sample import DEMO_TOKENIZER_DIR

from .conftest import TEST_MAX_LENGTH


def evaluate(instance, collated, *, max_length=TEST_MAX_LENGTH, chat_template=None) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(
        instance=instance,
        resources={
            "paths": CollatePaths(input_dir=str(collated.input_dir), output_dir=str(collated.output_dir)),
            "tokenizer": TokenizerResource(name_or_path=str(DEMO_TOKENIZER_DIR), chat_template=chat_template),
            "packing": PackingSettings(max_length=max_length),
        },
    )
    result = nightly_collate(context)
    if isinstance(result, dg.SkipReason):
        return []
    return list(result)


def test_unchanged_partitions_request_nothing(collated):
    assert evaluate(collated.instance, collated) == []


def test_edited_file_requests_only_its_partition(collated):
    path = collated.input_dir / "demo_small.jsonl"
    original = path.read_bytes()
    try:
        path.write_bytes(original + b'{"messages": [{"role": "user", "content": "one more"}]}\n')
        requests = evaluate(collated.instance, collated)
        assert [r.partition_key for r in requests] == ["demo_small.jsonl"]
        assert requests[0].tags["collate/stale_reason"] == "input file changed"
        assert requests[0].run_key == "demo_small.jsonl"
    finally:
        path.write_bytes(original)
    # Same bytes again (new mtime): current again, since staleness follows content, not time.
    assert evaluate(collated.instance, collated) == []


def test_changed_max_length_requests_every_partition(collated):
    requests = evaluate(collated.instance, collated, max_length=TEST_MAX_LENGTH * 2)
    assert sorted(r.partition_key for r in requests) == collated.keys
    assert {r.tags["collate/stale_reason"] for r in requests} == {"settings changed"}


def test_changed_chat_template_requests_every_partition(collated, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text((DEMO_TOKENIZER_DIR / "chat_template.jinja").read_text() + "\n")
    requests = evaluate(collated.instance, collated, chat_template=str(template))
    assert sorted(r.partition_key for r in requests) == collated.keys
    assert {r.tags["collate/stale_reason"] for r in requests} == {"tokenizer changed"}


def test_registered_but_never_materialized_partitions_are_requested(collated):
    with dg.instance_for_test() as instance:
        register_partitions(instance, collated.input_dir)
        # Partitions typed by hand in the UI are skipped (with a warning), not a failed tick.
        instance.add_dynamic_partitions("input_files", ["typed by hand.jsonl", "gone.jsonl"])
        requests = evaluate(instance, collated)
    assert sorted(r.partition_key for r in requests) == collated.keys
    assert {r.tags["collate/stale_reason"] for r in requests} == {"never tokenized"}


def test_rebuilding_a_requested_partition_makes_it_current_again(tmp_path):
    """Materialize, edit, let the schedule ask, run what it asked for: then it asks for nothing."""
    import shutil

    from collate_assets.sample import DEMO_INPUT_DIR

    from .conftest import make_resources, materialize_partition

    input_dir = tmp_path / "in"
    input_dir.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", input_dir / "small.jsonl")
    resources = make_resources(input_dir, str(tmp_path / "out"))
    folders = type("Folders", (), {"input_dir": input_dir, "output_dir": tmp_path / "out"})
    with dg.instance_for_test() as instance:
        (key,) = register_partitions(instance, input_dir)
        assert [r.partition_key for r in evaluate(instance, folders)] == [key]
        assert materialize_partition(instance, resources, key).success
        assert evaluate(instance, folders) == []
        with open(input_dir / "small.jsonl", "a", encoding="utf-8") as f:
            f.write('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
        (request,) = evaluate(instance, folders)
        assert materialize_partition(instance, resources, request.partition_key).success
        assert evaluate(instance, folders) == []
