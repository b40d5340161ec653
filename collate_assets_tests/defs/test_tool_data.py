"""Tool-calling data through the asset graph: the template's facts on the tokenized asset, a refusal blocks."""

import json

import dagster as dg

from collate_assets.sample import DEMO_TOKENIZER_DIR

from ..helpers import SHARED_DIR
from .helpers import build_dataset_defs, demo_settings, materialize, register

GLAIVE = SHARED_DIR / "data/llamafactory_glaive_toolcall_zh/glaive_toolcall_zh_demo.json"


def test_tool_conversations_materialize_with_the_template_facts(tmp_path):
    records = json.loads(GLAIVE.read_text())[:40]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tools.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", tokenizer=str(SHARED_DIR / "tokenizers" / "Qwen3"),
                                            labels="assistant", max_length=4096))
    with dg.instance_for_test() as instance:
        key = "tools.jsonl"
        register(instance, [key])
        result = materialize(defs, instance, key, assets=["tokenized_conversations"])
        assert result.success
        [mat] = [e.materialization for e in result.get_asset_materialization_events()]
        facts = mat.metadata["chat_template"].value
        assert facts["tools"] and facts["tool_calls"] and facts["end_of_turn"] == "<|im_end|>"
        assert mat.metadata["conversations"].value == 40 and mat.metadata["rejected"].value == 0


def test_a_refused_template_fails_the_tokenized_asset_with_the_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}) + "\n")
    template = tmp_path / "bare.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", tokenizer=str(DEMO_TOKENIZER_DIR),
                                            chat_template=str(template), labels="assistant", max_length=4096))
    with dg.instance_for_test() as instance:
        key = "chat.jsonl"
        register(instance, [key])
        result = materialize(defs, instance, key, assets=["tokenized_conversations"], raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert "writes no end-of-turn text after an assistant turn" in failure.step_failure_data.error.message
