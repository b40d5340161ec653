"""The model's own tokenizer.json is the reference pipeline (issue 21 point 1).

transformers 5 rebuilds a tokenizer's normalizer and pre-tokenizer from its Python class, and for
SmolLM2 (GPT2Tokenizer: the file's `Digits` pre-tokenizer is lost) and Phi-3 (LlamaTokenizer: Metaspace
instead of the file's normalizer) that segments text unlike the file the model was pretrained with. By
default the engine encodes with `tokenizers.Tokenizer.from_file(tokenizer.json)`; `tokenizer_pipeline=
"transformers"` keeps transformers' backend. Either way the two are compared and the drift reported.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pyarrow as pa
import pytest

from collate_assets import cli
from collate_assets.core import CollateSettings, load_tokenizer, tokenize_file
from collate_assets.core.tokens.tokenizer import other_backend, tokenizer_fingerprint
from collate_assets_tests.helpers import collate_command, run

# Tokenizers whose two pipelines differ on ordinary chat text, and one where they agree.
DIFFERING = {"SmolLM2-135M-Instruct": True, "Phi-3-mini-4k-instruct": True, "Qwen3": False}

# A numbered list after a blank line ("\n\n1." is `ĊĊ 1` in SmolLM2's file, `Ċ Ċ 1` in transformers'),
# and turns that start right after a special token (Phi-3: "▁Hello" in the file, "Hello" in transformers').
CONVERSATIONS = [
    [{"role": "user", "content": "Hello\n\n1. apples\n2. pears 12345"},
     {"role": "assistant", "content": "Sure:\n\n1. ok\n\n2. 3.14"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello there, café naïve."}],
    [{"role": "user", "content": "Count: 1 2 3"}, {"role": "assistant", "content": "4 5 6"},
     {"role": "user", "content": "\n\n\nMore?"}, {"role": "assistant", "content": "No.\n\n1."}],
]


@pytest.fixture(scope="module")
def chats_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS), encoding="utf-8")
    return path


def _spill_ids(path) -> list[list[int]]:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all().column("input_ids").to_pylist()


def _file_pipeline(folder):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _transformers_pipeline(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).backend_tokenizer


@pytest.mark.parametrize("name", list(DIFFERING))
@pytest.mark.parametrize("pipeline", ["file", "transformers"])
def test_written_ids_are_the_chosen_pipeline(name, pipeline, tokenizer_paths, chats_jsonl, tmp_path):
    folder = tokenizer_paths[name]
    tokenizer = load_tokenizer(folder, tokenizer_pipeline=pipeline)
    settings = CollateSettings(workers=1, tokenizer_pipeline=pipeline)
    stats = tokenize_file(chats_jsonl, tmp_path / "spill.arrow", tokenizer, settings)
    written = _spill_ids(tmp_path / "spill.arrow")

    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in CONVERSATIONS]
    from_file = [e.ids for e in _file_pipeline(folder).encode_batch(texts, add_special_tokens=False)]
    from_transformers = [e.ids for e in _transformers_pipeline(folder).encode_batch(texts, add_special_tokens=False)]
    assert written == (from_file if pipeline == "file" else from_transformers)
    # transformers' own call goes through the same backend
    assert [tokenizer.apply_chat_template(m, tokenize=True)["input_ids"] for m in CONVERSATIONS] == written

    differing = sum(a != b for a, b in zip(from_file, from_transformers))
    assert (differing > 0) == DIFFERING[name]
    drift = stats.tokenizer_drift
    assert drift["pipeline"] == pipeline and drift["compared_with"] == ("transformers" if pipeline == "file" else "file")
    assert (drift["texts"], drift["differing"]) == (len(CONVERSATIONS), differing)
    assert (drift["probe_differing"] > 0) == DIFFERING[name]
    assert drift["probe_texts"] > 20
    if DIFFERING[name]:
        example = drift["example"]
        assert example["file"] != example["transformers"] and example["text"]
    else:
        assert drift["example"] is None
    assert stats.to_dict()["tokenizer_drift"] == drift


def test_reported_examples(tokenizer_paths):
    smol = load_tokenizer(tokenizer_paths["SmolLM2-135M-Instruct"]).collate_drift
    assert smol.example == {"text": "\n\n1", "file": ["ĊĊ", "1"], "transformers": ["Ċ", "Ċ", "1"]}
    phi = load_tokenizer(tokenizer_paths["Phi-3-mini-4k-instruct"])
    assert phi.backend_tokenizer.encode("<|user|>\nHello", add_special_tokens=False).tokens[-1] == "▁Hello"
    assert other_backend(phi).encode("<|user|>\nHello", add_special_tokens=False).tokens[-1] == "Hello"
    assert load_tokenizer(tokenizer_paths["Qwen3"]).collate_drift.differing == 0


@pytest.mark.parametrize("name", list(DIFFERING))
def test_special_tokens_offsets_and_batches_work_on_the_file_pipeline(name, tokenizer_paths):
    tokenizer = load_tokenizer(tokenizer_paths[name])
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token
    text = f"Hi{eos}\nHello 12"
    encoding = backend.encode(text, add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids(eos) in encoding.ids
    assert [e.ids for e in backend.encode_batch_fast([text], add_special_tokens=False)] == [encoding.ids]
    start, end = encoding.offsets[encoding.ids.index(tokenizer.convert_tokens_to_ids(eos))]
    assert text[start:end].startswith(eos)
    assert backend.decode(encoding.ids, skip_special_tokens=False).replace("▁", " ").strip().endswith("Hello 12")


def test_truncation_and_padding_of_the_file_are_not_applied(tokenizer_paths, tmp_path):
    folder = tmp_path / "smol"
    shutil.copytree(tokenizer_paths["SmolLM2-135M-Instruct"], folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tokenizer = load_tokenizer(folder)
    text = "one two three four five six seven"
    assert len(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids) == 7
    assert len(tokenizer.backend_tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids) == 7


def test_first_chunk_drift_is_the_same_with_workers(tokenizer_paths, chats_jsonl, tmp_path):
    tokenizer = load_tokenizer(tokenizer_paths["SmolLM2-135M-Instruct"])
    one = tokenize_file(chats_jsonl, tmp_path / "a.arrow", tokenizer, CollateSettings(workers=1), chunk_lines=2)
    two = tokenize_file(chats_jsonl, tmp_path / "b.arrow", tokenizer, CollateSettings(workers=2), chunk_lines=2)
    assert two.workers == 2
    assert one.tokenizer_drift == two.tokenizer_drift
    assert one.tokenizer_drift["texts"] == 2  # the first chunk only
    assert _spill_ids(tmp_path / "a.arrow") == _spill_ids(tmp_path / "b.arrow")


def test_the_other_pipeline_is_built_once_for_many_files_and_never_handed_to_workers(tokenizer_paths, chats_jsonl, tmp_path):
    """Every file's first chunk is compared with the other pipeline: it is built once (0.4 s for Qwen3; 20
    small files took 10.8 s, 8.8 s of it rebuilding it), and dropped before workers are forked."""
    from collate_assets.core.tokens import tokenize as tokenize_module
    from collate_assets.core.tokens.tokenizer import forget_other_backend

    tokenizer = load_tokenizer(tokenizer_paths["SmolLM2-135M-Instruct"])
    kept = other_backend(tokenizer)
    assert kept is not None and other_backend(tokenizer) is kept  # the one use_pipeline compared with, kept
    drifts = [tokenize_file(chats_jsonl, tmp_path / f"{k}.arrow", tokenizer, CollateSettings(workers=1)).tokenizer_drift
              for k in range(3)]
    assert other_backend(tokenizer) is kept and drifts[0] == drifts[1] == drifts[2] and drifts[0]["differing"] > 0
    held_at_fork = []
    original = tokenize_module._Pool.__init__

    def pool_init(self, chunk_tokenizer, workers):
        held_at_fork.append(getattr(chunk_tokenizer.encoder.tokenizer, "collate_other_backend", None))
        original(self, chunk_tokenizer, workers)

    tokenize_module._Pool.__init__ = pool_init
    try:
        stats = tokenize_file(chats_jsonl, tmp_path / "w.arrow", tokenizer, CollateSettings(workers=2), chunk_lines=2)
    finally:
        tokenize_module._Pool.__init__ = original
    # the first chunk compared here with the live pipeline, which is then dropped before the fork
    assert stats.workers == 2 and held_at_fork == [None]
    assert stats.tokenizer_drift["texts"] == 2 and stats.tokenizer_drift["differing"] > 0  # (a chunk of 2 lines)
    assert tokenizer.collate_other_backend is None
    # the next file: built again for its first chunk, in this process beside the workers, and not kept
    tokenize_module._Pool.__init__ = pool_init
    try:
        again = tokenize_file(chats_jsonl, tmp_path / "w2.arrow", tokenizer, CollateSettings(workers=2), chunk_lines=2)
    finally:
        tokenize_module._Pool.__init__ = original
    assert again.tokenizer_drift == stats.tokenizer_drift and held_at_fork == [None, None]
    assert tokenizer.collate_other_backend is None
    forget_other_backend(tokenizer)
    assert getattr(tokenizer, "collate_other_backend") is None and other_backend(tokenizer) is not None


def test_setting_flag_environment_and_fingerprints(tokenizer_paths):
    assert CollateSettings().tokenizer_pipeline == "file"
    assert CollateSettings.from_env({"COLLATE_TOKENIZER_PIPELINE": "transformers"}).tokenizer_pipeline == "transformers"
    with pytest.raises(ValueError, match="COLLATE_TOKENIZER_PIPELINE"):
        CollateSettings.from_env({"COLLATE_TOKENIZER_PIPELINE": "slow"})
    args = cli.build_parser().parse_args(["--tokenizer-pipeline", "transformers"])
    assert cli.settings_from_args(args).tokenizer_pipeline == "transformers"
    assert "--tokenizer-pipeline" in cli.build_parser().format_help()

    # It changes the outputs: the settings fingerprint, the Dagster code versions and the tokenizer's own.
    file, transformers = CollateSettings(), CollateSettings(tokenizer_pipeline="transformers")
    assert file.fingerprint() != transformers.fingerprint()
    from collate_assets.defs.assets import Dataset

    assert Dataset(file).tokenize_code_version() != Dataset(transformers).tokenize_code_version()
    assert Dataset(file).pack_code_version() != Dataset(transformers).pack_code_version()
    folder = tokenizer_paths["SmolLM2-135M-Instruct"]
    assert tokenizer_fingerprint(load_tokenizer(folder)) != tokenizer_fingerprint(
        load_tokenizer(folder, tokenizer_pipeline="transformers"))


def test_dagster_resource_and_component_have_the_setting(tokenizer_paths):
    from collate_assets.defs.component import CollateDataset
    from collate_assets.defs.resources import CollateConfig, cached_tokenizer

    assert CollateConfig.model_fields["tokenizer_pipeline"].default == "file"
    assert CollateDataset.model_fields["tokenizer_pipeline"].default == "file"
    settings = CollateSettings(tokenizer=str(tokenizer_paths["Phi-3-mini-4k-instruct"]), tokenizer_pipeline="transformers")
    assert CollateConfig.from_settings(settings).settings() == settings
    tokenizer = cached_tokenizer(settings)
    assert tokenizer.collate_pipeline == "transformers"
    assert cached_tokenizer(dataclasses.replace(settings, tokenizer_pipeline="file")).collate_pipeline == "file"


def test_check_template_json_shows_the_drift(tokenizer_paths):
    folder = str(tokenizer_paths["Phi-3-mini-4k-instruct"])
    out = run(collate_command("--check-template", "--json", "-t", folder))
    assert out.returncode == 0, out.stderr
    drift = json.loads(out.stdout)["tokenizer_drift"]
    assert drift["pipeline"] == "file" and drift["probe_differing"] > 0 and drift["differing"] == 1
    text = run(collate_command("--check-template", "-t", folder), env=None)
    assert "tokenizer pipeline:    tokenizer.json; transformers' backend differs on" in text.stdout
    from collate_assets_tests.helpers import subprocess_env

    out = run(collate_command("--check-template", "--json", "-t", str(tokenizer_paths["Qwen3"])),
              env=subprocess_env(COLLATE_TOKENIZER_PIPELINE="transformers"))
    drift = json.loads(out.stdout)["tokenizer_drift"]
    assert (drift["pipeline"], drift["probe_differing"], drift["differing"]) == ("transformers", 0, 0)


def test_summary_line_when_texts_differ(tokenizer_paths, chats_jsonl, tmp_path):
    """Through the Dagster run (the command's default) and without it."""
    from collate_assets_tests.helpers import seed_dagster_home, subprocess_env

    home = seed_dagster_home(tmp_path / "home")
    out = run(collate_command("-q", "-i", str(chats_jsonl), "-o", str(tmp_path / "out"),
                              "-t", str(tokenizer_paths["SmolLM2-135M-Instruct"])),
              env=subprocess_env(DAGSTER_HOME=str(home)))
    assert out.returncode == 0, out.stderr
    assert ("  tokenizer: tokenizer.json pipeline (transformers' backend differs on 2 of 3 texts: 'Hello\\n\\n1' is "
            "['Hello', 'ĊĊ', '1'] in tokenizer.json, ['Hello', 'Ċ', 'Ċ', '1'] in transformers)") in out.stdout.splitlines()
    out = run(collate_command("--no-dagster", "-q", "-i", str(chats_jsonl), "-o", str(tmp_path / "out2"),
                              "-t", str(tokenizer_paths["Qwen3"])))
    assert out.returncode == 0, out.stderr
    assert "tokenizer:" not in out.stdout
