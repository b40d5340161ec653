"""The fast encoder (issue 23 point 1): fastokens, used only where it gives the reference's ids.

The reference is the tokenizer's backend (`tokenizers`, the model's tokenizer.json by default). With
`encoder=auto` the engine loads fastokens for files of more than one chunk, checks it on probe texts
at load and on the file's first texts and a sample of every chunk during the run, and goes back to the
reference on any difference. Outputs are the same bytes with either encoder.
"""

from __future__ import annotations

import json
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pytest

from collate_assets.core import CollateSettings, CollateError, load_tokenizer, tokenize_file
from collate_assets.core.tokens import encoder as encoder_module
from collate_assets.core.tokens.encoder import FAST_PROBES, FastBackend, TextEncoder, byte_lengths, char_offsets, load_fast
from collate_assets.core.tokens.probes import pipeline_probes
from collate_assets_tests.helpers import SHARED_DATA_FILES, collate_command, run, subprocess_env

fastokens = pytest.importorskip("fastokens", reason="fastokens has no wheel for this platform")

BYTE_LEVEL = ("SmolLM2-135M-Instruct", "Qwen3")
CHUNK = 64  # records a chunk in these tests, so a small file has many chunks

# Texts where offsets are easy to get wrong: characters of several bytes, a token holding part of a
# character, text that NFC changes (Qwen3 normalises to NFC), digits, whitespace runs.
EDGE = [
    [{"role": "user", "content": "cafe\u0301 A\u030a \u212b 👩‍💻 你好，世界"},
     {"role": "assistant", "content": "Ｆｕｌｌ ① ½ naïve 😀😀😀 안녕하세요"}],
    [{"role": "user", "content": "\n\n1. 12345\n\n\n2.   x"}, {"role": "assistant", "content": "  ok \t\n 3.14159"}],
]


@pytest.fixture(scope="module")
def chats(tmp_path_factory, shared_dir):
    """A JSONL file of the shared conversations (role/content and ShareGPT) and the edge cases, many chunks long."""
    records = []
    for key in ("kto", "fastchat"):
        for item in json.loads((shared_dir / SHARED_DATA_FILES[key]).read_text(encoding="utf-8"))[:200]:
            records.append({k: item[k] for k in ("messages", "conversations") if k in item})
    for k in range(5, len(records), 97):
        records[k] = {"messages": EDGE[k % 2]}
    path = tmp_path_factory.mktemp("encoder") / "chats.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _spill(path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()


def _run(path, out, tokenizer, **settings):
    stats = tokenize_file(path, out, tokenizer, CollateSettings(**settings), chunk_lines=CHUNK)
    return stats, _spill(out)


@pytest.mark.parametrize("name", BYTE_LEVEL)
@pytest.mark.parametrize("labels", ["all", "assistant"])
def test_fast_gives_the_same_spill_as_the_reference(name, labels, load_shared_tokenizer, chats, tmp_path):
    tokenizer = load_shared_tokenizer(name)
    workers = 2 if labels == "assistant" else 1
    ref_stats, reference = _run(chats, tmp_path / "ref.arrow", tokenizer, labels=labels, encoder="tokenizers", workers=workers)
    stats, fast = _run(chats, tmp_path / "fast.arrow", tokenizer, labels=labels, encoder="auto", workers=workers)
    assert fast.equals(reference)
    assert (tmp_path / "ref.arrow").read_bytes() == (tmp_path / "fast.arrow").read_bytes()
    assert {k: ref_stats.encoder[k] for k in ("asked", "used", "reason", "checked", "differing")} == \
        {"asked": "tokenizers", "used": "tokenizers", "reason": "", "checked": 0, "differing": 0}
    assert stats.encoder["used"] == "fast", stats.encoder
    assert stats.encoder["differing"] == 0
    # the first chunk's first 128 texts (here all 64), then one in 64 of each chunk
    assert stats.encoder["checked"] >= CHUNK + (stats.sequences - CHUNK) // CHUNK


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_offsets_follow_from_the_ids(name, load_shared_tokenizer):
    """Character offsets computed from each id's bytes are those `tokenizers` gives, also for tokens that
    hold part of a character; texts NFC would change are left to the reference."""
    tokenizer = load_shared_tokenizer(name)
    reference = tokenizer.backend_tokenizer
    lengths, nfc, why = byte_lengths(reference)
    assert lengths is not None, why
    texts = [*FAST_PROBES, *pipeline_probes(tokenizer), *(m["content"] for c in EDGE for m in c)]
    for text in texts:
        if nfc and not unicodedata.is_normalized("NFC", text):
            continue
        theirs = reference.encode(text, add_special_tokens=False)
        ids = np.asarray(theirs.ids, dtype=np.int64)
        assert char_offsets(text, ids, lengths).tolist() == [list(o) for o in theirs.offsets], text


def test_a_tokenizer_fastokens_cannot_load_stays_with_the_reference(tokenizer_paths, chats, tmp_path):
    """Phi-3 through transformers' pipeline (a Metaspace pre-tokenizer, which fastokens does not have):
    auto encodes with tokenizers and says why; fast refuses the run."""
    tokenizer = load_tokenizer(tokenizer_paths["Phi-3-mini-4k-instruct"], tokenizer_pipeline="transformers")
    stats, _ = _run(chats, tmp_path / "spill.arrow", tokenizer, encoder="auto", workers=1, tokenizer_pipeline="transformers")
    assert stats.encoder["used"] == "tokenizers"
    assert "fastokens cannot load this tokenizer" in stats.encoder["reason"]
    with pytest.raises(CollateError, match="encoder=fast: fastokens cannot load"):
        _run(chats, tmp_path / "spill2.arrow", tokenizer, encoder="fast", workers=1, tokenizer_pipeline="transformers")


def test_offsets_that_do_not_follow_from_the_ids_come_from_the_reference(load_shared_tokenizer, chats, tmp_path):
    """Phi-3's own tokenizer.json (a normaliser that prepends and replaces "▁"): fastokens gives its ids,
    but character offsets do not follow from them, so labels=assistant encodes with tokenizers and says
    why; the spill is the reference's."""
    tokenizer = load_shared_tokenizer("Phi-3-mini-4k-instruct")
    _, reference = _run(chats, tmp_path / "ref.arrow", tokenizer, encoder="tokenizers", labels="assistant", workers=1)
    stats, written = _run(chats, tmp_path / "spill.arrow", tokenizer, encoder="auto", labels="assistant", workers=1)
    assert written.equals(reference)
    assert stats.encoder["used"] == "tokenizers"
    assert "character offsets" in stats.encoder["reason"] and "normaliser" in stats.encoder["reason"]


def test_one_chunk_files_do_not_load_it(load_shared_tokenizer, tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in EDGE), encoding="utf-8")
    tokenizer = load_tokenizer(load_shared_tokenizer("SmolLM2-135M-Instruct").name_or_path)
    stats, _ = _run(path, tmp_path / "spill.arrow", tokenizer, encoder="auto", workers=1)
    assert stats.encoder["used"] == "tokenizers" and "one chunk" in stats.encoder["reason"]
    assert getattr(tokenizer, "collate_fast", None) is None
    stats, _ = _run(path, tmp_path / "spill2.arrow", tokenizer, encoder="fast", workers=1)
    assert stats.encoder["used"] == "fast"


def _wrong_fast(tokenizer, word: str) -> FastBackend:
    """A fast encoder for `tokenizer` that is wrong on one word only: the word is an added token there."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    new_id = max(tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    spec["added_tokens"].append({"id": new_id, "content": word, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    wrong = fastokens.Tokenizer.from_json_str(json.dumps(spec))
    lengths, nfc, _ = byte_lengths(tokenizer.backend_tokenizer)
    return FastBackend(wrong, "", lengths, nfc)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_difference_during_the_run_goes_back_to_the_reference(workers, load_shared_tokenizer, tmp_path):
    """A fast encoder that passed its load probes but differs on a word met in the 5th chunk: the chunk
    where a checked text shows it is encoded again with the reference, the rest of the run uses the
    reference, the statistics say so, and what is written is the reference's."""
    word = "Quokkatastrophe"
    lines = [{"messages": [{"role": "user", "content": f"question {k}"},
                           {"role": "assistant", "content": f"answer {k}" + (f" {word}" if k >= 4 * CHUNK else "")}]}
             for k in range(8 * CHUNK)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    folder = load_shared_tokenizer("SmolLM2-135M-Instruct").name_or_path
    ref_stats, reference = _run(path, tmp_path / "ref.arrow", load_tokenizer(folder), encoder="tokenizers", workers=workers)
    tokenizer = load_tokenizer(folder)
    tokenizer.collate_fast = _wrong_fast(tokenizer, word)
    stats, written = _run(path, tmp_path / "fast.arrow", tokenizer, encoder="auto", workers=workers)
    assert written.equals(reference)
    assert stats.encoder["used"] == "tokenizers"
    assert stats.encoder["differing"] >= 1
    assert word in stats.encoder["reason"] and "other ids" in stats.encoder["reason"]


def test_a_wrong_fast_encoder_fails_its_load_probes(load_shared_tokenizer):
    """The load probes catch a fast encoder that segments unlike the reference: here one built without
    SmolLM2's Digits pre-tokenizer (what transformers 5 drops) differs on the digit probes, and one
    without an added token differs on that token in context."""
    tokenizer = load_shared_tokenizer("SmolLM2-135M-Instruct")
    reference = tokenizer.backend_tokenizer
    backend = load_fast(tokenizer)
    assert backend.encoder is not None and backend.reason == ""
    probes = [*pipeline_probes(tokenizer), *FAST_PROBES]
    spec = json.loads(reference.to_str())
    no_digits = dict(spec, pre_tokenizer=spec["pre_tokenizer"]["pretokenizers"][1])
    no_token = dict(spec, added_tokens=[t for t in spec["added_tokens"] if t["content"] != "<|im_end|>"])
    for wrong in (no_digits, no_token):
        fast = FastBackend(fastokens.Tokenizer.from_json_str(json.dumps(wrong)), "", backend.byte_lengths)
        differs = encoder_module._first_difference(fast, reference, probes, offsets=True)
        assert differs is not None and "ids differ" in differs


def test_command_flag_and_environment(tokenizer_paths, chats, tmp_path):
    folder = tokenizer_paths["SmolLM2-135M-Instruct"]
    out = tmp_path / "out"
    result = run(collate_command("-i", chats, "-o", out, "-t", folder, "--no-dagster", "--json", "--encoder", "fast"))
    assert result.returncode == 0, result.stderr
    [file_stats] = json.loads(result.stdout)
    assert file_stats["tokenize"]["encoder"]["used"] == "fast"
    bad = run(collate_command("-i", chats, "-o", out, "-t", folder, "--no-dagster", "--encoder", "quick"))
    assert bad.returncode == 2 and "--encoder" in bad.stderr
    env_run = run(collate_command("-i", chats, "-o", tmp_path / "out2", "-t", folder, "--no-dagster", "--json"),
                  env={**subprocess_env(), "COLLATE_ENCODER": "tokenizers"})
    assert env_run.returncode == 0, env_run.stderr
    assert json.loads(env_run.stdout)[0]["tokenize"]["encoder"]["used"] == "tokenizers"
    assert (out / "chats.arrow").read_bytes() == (tmp_path / "out2" / "chats.arrow").read_bytes()


def test_preloaded_from_the_file_while_transformers_loads(tokenizer_paths, chats, tmp_path):
    """preload_fast starts fastokens on the tokenizer.json in a thread during load_tokenizer; it is used
    only when the reference is that file as it is (not transformers' pipeline), and checked the same."""
    folder = tokenizer_paths["SmolLM2-135M-Instruct"]
    tokenizer = load_tokenizer(folder, preload_fast=True)
    preload = encoder_module._preload_of(tokenizer)
    assert preload is not None and preload.path == str(folder / "tokenizer.json")
    stats, written = _run(chats, tmp_path / "fast.arrow", tokenizer, encoder="auto", workers=2)
    assert stats.encoder["used"] == "fast" and stats.encoder["differing"] == 0
    assert not preload.thread.is_alive() and tokenizer.collate_fast.encoder is preload.result
    _, reference = _run(chats, tmp_path / "ref.arrow", tokenizer, encoder="tokenizers", workers=2)
    assert written.equals(reference)
    other = load_tokenizer(folder, tokenizer_pipeline="transformers", preload_fast=True)
    assert encoder_module._preload_of(other) is None  # its reference is not the file


def test_worth_preloading(tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * encoder_module.PRELOAD_MIN_BYTES)
    assert not encoder_module.worth_preloading("auto", [small, tmp_path / "missing.jsonl"])
    assert encoder_module.worth_preloading("auto", [small, big])
    assert encoder_module.worth_preloading("fast", [small])
    assert not encoder_module.worth_preloading("tokenizers", [big])


def test_without_fastokens_auto_uses_tokenizers_and_fast_refuses(tokenizer_paths, tmp_path):
    """Where fastokens has no wheel (aarch64 Linux, Windows) it is not installed: auto encodes with
    tokenizers and says why, fast refuses the run with the reason. (fastokens hidden from the import.)"""
    script = (
        "import sys, runpy; sys.modules['fastokens'] = None; "
        "sys.argv = ['collate'] + sys.argv[1:]; runpy.run_module('collate_assets.cli', run_name='__main__')"
    )
    folder = tokenizer_paths["SmolLM2-135M-Instruct"]
    source = tmp_path / "in" / "many.jsonl"  # more than one chunk (1024 records), where auto would load it
    source.parent.mkdir()
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q {k}"},
                                                       {"role": "assistant", "content": f"a {k}"}]}) + "\n"
                              for k in range(1100)))
    base = [sys.executable, "-c", script, "-i", str(source), "-t", str(folder), "--no-dagster"]
    auto = run([*base, "-o", str(tmp_path / "a"), "--json"])
    assert auto.returncode == 0, auto.stderr
    report = json.loads(auto.stdout)[0]["tokenize"]["encoder"]
    assert report["used"] == "tokenizers" and report["reason"] == "fastokens is not installed"
    fast = run([*base, "-o", str(tmp_path / "f"), "--encoder", "fast"])
    assert fast.returncode != 0 and "encoder=fast: fastokens is not installed" in fast.stderr
