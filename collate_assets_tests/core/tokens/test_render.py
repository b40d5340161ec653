"""Rendering without apply_chat_template's per-call work (issue 23 point 2, core/tokens/render.py).

The direct renderer must give apply_chat_template's text byte for byte on every template in the tests
(the nine public families, the shared tokenizers' own templates, the demo's), keep the render limits,
and when it is made to differ, the run goes back to apply_chat_template with the same output.
"""

from __future__ import annotations

import functools
import json

import pyarrow as pa
import pytest

from collate_assets.core import CollateError, CollateSettings, load_tokenizer, tokenize_file
from collate_assets.core.tokens.chat import ChatEncoder
from collate_assets.core.read.formats import normalize_record
from collate_assets.core.tokens.template_limits import RenderLimits
from collate_assets_tests.core.tokens.test_template_families import FAMILIES, RECORDS
from collate_assets_tests.core.tokens.test_template_families import family_tokenizer as load_family
from collate_assets_tests.helpers import TOKENIZER_NAMES

EXTRA = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\n1. x"},
                  {"role": "assistant", "content": "Hello 👋 café"}, {"role": "user", "content": "More?"},
                  {"role": "assistant", "content": "No."}]},
]


def _same_both_ways(tokenizer, records) -> int:
    encoder = ChatEncoder.from_settings(tokenizer, CollateSettings(labels="assistant", unshown_reasoning="drop"))
    renderer = encoder.renderer
    assert renderer.on, renderer.reason
    compared = 0
    for record in records:
        conversation = normalize_record(json.loads(json.dumps(record)))
        try:
            adapted = encoder.adapt(conversation)
        except ValueError:
            continue
        tools = conversation.tools or None
        try:
            theirs = tokenizer.apply_chat_template(adapted, tokenize=False, **({"tools": tools} if tools else {}))
        except Exception as exc:  # the template refuses the record: the direct render must refuse it too
            with pytest.raises(type(exc)):
                renderer.render(adapted, tools)
            continue
        assert renderer.render(adapted, tools) == theirs
        compared += 1
    return compared


@functools.lru_cache(maxsize=None)
def family_tokenizer(name: str):
    return load_family(name)  # loaded once: rendering does not change a tokenizer


@pytest.mark.parametrize("name", list(FAMILIES))
def test_direct_render_equals_apply_chat_template_on_every_family(name):
    records = [RECORDS[r] for r in FAMILIES[name].records] + EXTRA
    assert _same_both_ways(family_tokenizer(name), records) >= 1


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_direct_render_equals_apply_chat_template_on_the_shared_templates(name, load_shared_tokenizer):
    assert _same_both_ways(load_shared_tokenizer(name), [*RECORDS.values(), *EXTRA]) >= 1


def test_direct_render_equals_apply_chat_template_on_the_demo_template():
    assert _same_both_ways(load_tokenizer(_demo()), [RECORDS["plain"], *EXTRA]) >= 1


def _demo():
    from collate_assets.core.settings import CollateSettings as S

    return S().tokenizer_name()


def _spill(path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_renderer_made_to_differ_goes_back_to_apply_chat_template(workers, load_shared_tokenizer, tmp_path):
    """A template that prints bos_token; the direct renderer's copy of it is changed after its load probes.
    The first checked render shows the difference: that text and every later one come from
    apply_chat_template, the statistics say so, and the spill is the reference's."""
    template = tmp_path / "t.jinja"
    template.write_text("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    folder = load_shared_tokenizer("SmolLM2-135M-Instruct").name_or_path
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{k}"},
                                                     {"role": "assistant", "content": f"a{k}"}]}) + "\n"
                            for k in range(300)))
    settings = CollateSettings(workers=workers, encoder="tokenizers")
    tokenizer = load_tokenizer(folder, chat_template=template)
    reference_stats = tokenize_file(path, tmp_path / "ref.arrow", tokenizer, settings, chunk_lines=64)
    assert reference_stats.encoder["render"] == "direct" and reference_stats.encoder["render_differing"] == 0

    original = ChatEncoder.use_direct_render

    def tampered(self):
        original(self)
        self.renderer._variables = dict(self.renderer._variables, bos_token="<WRONG>")

    ChatEncoder.use_direct_render = tampered
    try:
        stats = tokenize_file(path, tmp_path / "out.arrow", tokenizer, settings, chunk_lines=64)
    finally:
        ChatEncoder.use_direct_render = original
    assert _spill(tmp_path / "out.arrow").equals(_spill(tmp_path / "ref.arrow"))
    assert stats.encoder["render"] == "apply_chat_template"
    assert stats.encoder["render_differing"] >= 1  # with workers, a chunk already handed out may find it too
    assert "other text than apply_chat_template" in stats.encoder["render_reason"]


def test_render_limits_hold_for_the_direct_renderer(load_shared_tokenizer, tmp_path):
    """The compiled template is the bounded sandbox's: a conversation whose render goes over the size
    limit is rejected with that reason, as through apply_chat_template."""
    folder = load_shared_tokenizer("SmolLM2-135M-Instruct").name_or_path
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{% if m.content.startswith('BIG') %}{{ m.content * 2000 }}"
                        "{% else %}{{ m.content }}{% endif %}{% endfor %}")
    tokenizer = load_tokenizer(folder, chat_template=template, render_limits=RenderLimits(max_chars=200_000))
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "BIG" + "x" * 500},
                                             {"role": "assistant", "content": "y"}]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": "an answer"}]}) + "\n")
    stats = tokenize_file(path, tmp_path / "out.arrow", tokenizer, CollateSettings(workers=1))
    assert stats.encoder["render"] == "direct"
    assert stats.rejected == 1 and stats.conversations == 1
    assert any("limit" in reason or "characters" in reason for reason in stats.reject_reasons), stats.reject_reasons
