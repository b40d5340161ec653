"""Reliability II: hostile inputs and faults beyond the bad-input corpus (issue 11).

Each section is one class of failure; the tests use the real CLI (subprocesses), real tokenizers and
a real Dagster instance. Time limits are checked through subprocess timeouts far above what the
command needs, never by timing assertions.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import numpy as np
import orjson
import pytest

from collate_assets.core import CollateError, CollateSettings, collate_file, load_tokenizer
from collate_assets.core.pack import packing
from collate_assets.defs.resources import CollateConfig
from collate_assets.core.plan import file_name_to_key
from collate_assets_tests.defs.helpers import arrow_defs, register_folder, run_arrow
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import collate_command, seed_dagster_home, subprocess_env

SHARED_TOKENIZERS = Path(__file__).resolve().parents[3] / "shared" / "tokenizers"
GOOD_LINES = (DEMO_INPUT_DIR / "demo_small.jsonl").read_bytes().splitlines(keepends=True)[:6]
GOOD = b"".join(GOOD_LINES)


def collate(*args: str, home: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    if "--no-dagster" not in args and not home.exists():
        seed_dagster_home(home)
    return subprocess.run(
        collate_command(*args), env=subprocess_env(DAGSTER_HOME=str(home), **env),
        capture_output=True, text=True, timeout=timeout,
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def template_file(tmp_path: Path, body: str, name: str = "t.jinja") -> Path:
    return write(tmp_path / name, body.encode())


def materialize(instance, resources, key):
    return run_arrow(instance, resources, key)


def resources(input_dir: Path, output_dir: Path, **settings) -> dg.Definitions:
    if "render_timeout_seconds" in settings:
        settings["render_timeout"] = settings.pop("render_timeout_seconds")
    return arrow_defs(input_dir, output_dir, max_length=512, **settings)


def failure_text(result) -> str:
    from collate_assets.defs.run import _failure_message

    return _failure_message(result, Path("?"))


PATHS = pytest.mark.parametrize("engine", [[], ["--no-dagster"]], ids=["dagster", "no-dagster"])
ENGINES = [[], ["--no-dagster"]]  # PATHS's values, for the case lists of `side_by_side`


def case_key(*params) -> tuple:
    """A case's parameters as a dict key (the engine's argument list as a tuple)."""
    return tuple(tuple(p) if isinstance(p, list) else p for p in params)


def side_by_side(tmp_path_factory, run_case, cases) -> dict[tuple, Future]:
    """Run `run_case(folder, *case)` for every case, two at a time, and return {case_key(*case): future}.

    A case is one to three `collate` subprocesses, each most of its time importing on one core: one
    after the other they left this machine's second core idle. Each case runs exactly the commands and
    the assertions its test ran (the case function is the test's former body, `tmp_path` a folder of
    its own); the parametrized test of the case takes its future's result(), so the case's own
    assertion errors (or skip) are raised there, under its own test id. Cases share no folder and no
    DAGSTER_HOME."""
    seed_dagster_home(tmp_path_factory.mktemp("seed"))  # the session's template instance, before the threads
    with ThreadPoolExecutor(2) as pool:  # waits for every case
        return {case_key(*case): pool.submit(run_case, tmp_path_factory.mktemp("case"), *case) for case in cases}


# -- 1. never write where an input could be read or overwritten -------------------------------------


@pytest.fixture(scope="module")
def output_folder_cases(tmp_path_factory) -> dict:
    cases = [(engine, fmt, where) for engine in ENGINES for fmt in ("jsonl", "arrow") for where in ("same", "inside")]
    return side_by_side(tmp_path_factory, _an_output_folder_in_the_input_folder_is_refused, cases)


@PATHS
@pytest.mark.parametrize("fmt", ["jsonl", "arrow"])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_output_folder_in_the_input_folder_is_refused(output_folder_cases, engine, fmt, where):
    output_folder_cases[case_key(engine, fmt, where)].result()  # the case's run and assertions, just below


def _an_output_folder_in_the_input_folder_is_refused(tmp_path, engine, fmt, where):
    inputs = tmp_path / "D"
    write(inputs / "x.jsonl", GOOD)
    before = tree(inputs)
    out = inputs if where == "same" else inputs / "packed"
    result = collate("-i", str(inputs), "-o", str(out), "-f", fmt, "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 2, result.stderr
    assert "input folder" in result.stderr.splitlines()[-1]
    assert tree(inputs) == before  # nothing replaced, nothing added (no rejects to be read next time)
    # An input file given alone: its folder is the input folder.
    result = collate("-i", str(inputs / "x.jsonl"), "-o", str(out), "-f", fmt, "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 2 and tree(inputs) == before


FOREIGN = [("jsonl", "x.jsonl"), ("arrow", "x.rejects.jsonl"), ("parquet", "x.parquet"), ("msgpack", "x.msgpack")]


# Both paths write through the same engine writers (core/write/writers.py): every format on the engine
# path, the data-loss case of the issue (an input-like x.jsonl) through Dagster too (~15 s a case).
FOREIGN_CASES = [([], *FOREIGN[0])] + [(["--no-dagster"], *case) for case in FOREIGN]


@pytest.fixture(scope="module")
def foreign_file_cases(tmp_path_factory) -> dict:
    return side_by_side(tmp_path_factory, _a_file_this_tool_did_not_write_is_never_replaced, FOREIGN_CASES)


@pytest.mark.parametrize(
    "engine, fmt, name", FOREIGN_CASES, ids=["dagster-jsonl"] + [f"no-dagster-{fmt}" for fmt, _ in FOREIGN],
)
def test_a_file_this_tool_did_not_write_is_never_replaced(foreign_file_cases, engine, fmt, name):
    foreign_file_cases[case_key(engine, fmt, name)].result()  # the case's run and assertions, just below


def _a_file_this_tool_did_not_write_is_never_replaced(tmp_path, engine, fmt, name):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    mine = write(tmp_path / "out" / name, b'{"notes": "my own file, not an output"}\n')
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-f", fmt, "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 1
    assert str(mine) in result.stderr and "did not write" in result.stderr
    assert mine.read_bytes() == b'{"notes": "my own file, not an output"}\n'
    # Its own outputs are replaced as before: a second run with another setting rewrites them.
    mine.unlink()
    for max_length in ("512", "256"):
        result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-f", fmt, "-m", max_length,
                         "-q", *engine, home=tmp_path / "home")
        assert result.returncode == 0, result.stderr


def test_dagster_paths_refuse_an_output_or_spill_folder_in_the_input_folder(tmp_path):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    before = tree(tmp_path / "in")
    with dg.instance_for_test() as instance:
        register_folder(instance, tmp_path / "in")
        for output in (tmp_path / "in", tmp_path / "in" / "out"):
            result = materialize(instance, resources(tmp_path / "in", output), "x.jsonl")
            assert not result.success and "input folder" in failure_text(result)
        spill_inside = resources(tmp_path / "in", tmp_path / "out", spill_dir=str(tmp_path / "in"))
        assert not materialize(instance, spill_inside, "x.jsonl").success
    assert tree(tmp_path / "in") == before


# -- 2. hostile chat templates: bounded in time and size -------------------------------------------

HOSTILE = {
    "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}",
    "huge-product": "{{ 'x' * 10**9 }}{{ messages[0].content }}",
    "huge-ljust": "{{ messages[0].content.ljust(10**10) }}",
    "huge-center": "{{ messages[0].content|center(10**10) }}",
    "huge-format": "{{ '%1000000000s' % messages[0].content }}",
    "huge-str-format": "{{ '{:>1000000000}'.format(messages[0].content) }}",
    "namespace-doubling": "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "set-doubling": "{% set a = 'x' * 1000000 %}" + "{% set a = a + a %}" * 40 + "{{ a|length }}",
    "macro-doubling": "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ f('xx', 60) }}",
    "endless-output": "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages[0].content }}{% endfor %}{% endfor %}",
}


@pytest.fixture(scope="module")
def hostile_template_cases(tmp_path_factory) -> dict:
    return side_by_side(tmp_path_factory, _a_hostile_template_is_refused_at_load, [(name,) for name in HOSTILE])


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_is_refused_at_load(hostile_template_cases, name):
    hostile_template_cases[case_key(name)].result()  # the case's run and assertions, just below


def _a_hostile_template_is_refused_at_load(tmp_path, name):
    template = template_file(tmp_path, HOSTILE[name])
    write(tmp_path / "in" / "x.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--chat-template", str(template),
                     "--render-timeout", "1", "-q", "--no-dagster", home=tmp_path / "home", timeout=120)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert str(template) in last and "render" in last and "limit" in last and "refusing" in last
    assert not (tmp_path / "out" / "x.arrow").exists()


TRIGGERED = {
    "time": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "render time limit"),
    "size": ("{{ m.content * 100000 }}", "render size limit"),
}


def trigger_template(tmp_path: Path, kind: str) -> Path:
    """A plain template that goes over a limit only for a message whose content starts with `HOSTILE`."""
    hostile, _ = TRIGGERED[kind]
    return template_file(
        tmp_path,
        "{% for m in messages %}{% if m.content.startswith('HOSTILE') %}" + hostile + "{% endif %}"
        "<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    )


def conversation(content: str) -> list[dict]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": "An answer."}]


@pytest.fixture(scope="module")
def render_limit_cases(tmp_path_factory) -> dict:
    cases = [(engine, kind) for engine in ENGINES for kind in TRIGGERED]
    return side_by_side(tmp_path_factory, _a_conversation_over_a_render_limit_is_rejected_with_its_reason, cases)


@PATHS
@pytest.mark.parametrize("kind", list(TRIGGERED))
def test_a_conversation_over_a_render_limit_is_rejected_with_its_reason(render_limit_cases, engine, kind):
    render_limit_cases[case_key(engine, kind)].result()  # the case's run and assertions, just below


def _a_conversation_over_a_render_limit_is_rejected_with_its_reason(tmp_path, engine, kind):
    lines = [conversation("Hello there."), conversation("HOSTILE " + "y" * 400), conversation("Bye now.")]
    write(tmp_path / "in" / "x.jsonl", b"".join(orjson.dumps({"messages": c}) + b"\n" for c in lines))
    template = trigger_template(tmp_path, kind)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--chat-template", str(template),
                     "--render-timeout", "1", "--render-max-chars", "1000000", "--json", *engine,
                     home=tmp_path / "home", timeout=120)
    assert result.returncode == 0, result.stderr
    [stats] = json.loads(result.stdout)
    assert stats["tokenize"]["conversations"] == 2 and stats["tokenize"]["rejected"] == 1
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "x.rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 2 and TRIGGERED[kind][1] in reject["reason"]


@pytest.mark.parametrize("kind", list(TRIGGERED))
def test_limits_hold_for_any_apply_chat_template_call(tmp_path, kind):
    """Batches and single conversations, with tools= and add_generation_prompt=: the one over the limit raises."""
    from collate_assets.core.tokens.template_limits import RenderLimits, TemplateLimitError

    # A 0.3 s time limit (was 1 s): each of the six renders over it waits the whole limit, and the good
    # ones, a few short messages, render in well under a millisecond, so 0.3 s leaves them a wide margin.
    tokenizer = load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=trigger_template(tmp_path, kind),
                               render_limits=RenderLimits(seconds=0.3, max_chars=100000))
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    good = conversation("Hello.")
    for call in (
        lambda c: tokenizer.apply_chat_template(c, tokenize=False),
        lambda c: tokenizer.apply_chat_template(c, tools=tools, add_generation_prompt=True, tokenize=False),
        lambda c: tokenizer.apply_chat_template(c, tokenize=True),
    ):
        assert call([good, good])
        with pytest.raises(TemplateLimitError, match=TRIGGERED[kind][1]):
            call([good, conversation("HOSTILE")])
        with pytest.raises(TemplateLimitError, match=TRIGGERED[kind][1]):
            call(conversation("HOSTILE"))
        assert call(good)  # the next render is not affected


def test_render_limits_are_dagster_resource_settings(tmp_path):
    lines = [conversation("Hello there."), conversation("HOSTILE"), conversation("Bye now.")]
    write(tmp_path / "in" / "x.jsonl", b"".join(orjson.dumps({"messages": c}) + b"\n" for c in lines))
    res = resources(tmp_path / "in", tmp_path / "out", chat_template=str(trigger_template(tmp_path, "time")),
                    render_timeout_seconds=1.0)
    with dg.instance_for_test() as instance:
        register_folder(instance, tmp_path / "in")
        result = materialize(instance, res, "x.jsonl")
        assert result.success
        [event] = result.asset_materializations_for_node("tokenized_conversations")
        assert event.metadata["rejected"].value == 1
        assert any("render time limit" in reason for reason in event.metadata["reject_reasons"].value)


def test_the_bounded_sandbox_renders_like_transformers_sandbox():
    """Same text for real templates and data: the bounds change nothing for ordinary rendering."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    from collate_assets.core.tokens import template_limits

    data = Path(__file__).resolve().parents[3] / "shared" / "data"
    conversations = []
    from collate_assets.core import normalize_conversation

    for file in sorted(data.glob("*/*.json"))[:3]:
        for record in json.loads(file.read_text())[:100]:
            try:
                conversations.append(normalize_conversation(record))
            except ValueError:  # a shape this reader does not take (tool calls): not what is compared here
                continue
    if not conversations or not SHARED_TOKENIZERS.is_dir():
        pytest.skip("../shared data or tokenizers missing")
    for folder in sorted(SHARED_TOKENIZERS.iterdir()):
        # gpt-oss's folder carries no chat template: ../shared/templates has its public one
        template = SHARED_TOKENIZERS.parent / "templates" / "openai-gpt-oss-120b.jinja" if folder.name == "gpt-oss" else None
        tokenizer = load_tokenizer(folder, chat_template=template)
        bounded = tokenizer.apply_chat_template(conversations, tokenize=False)
        try:
            ctu.ImmutableSandboxedEnvironment = ImmutableSandboxedEnvironment
            ctu._compile_jinja_template.cache_clear()
            plain = tokenizer.apply_chat_template(conversations, tokenize=False)
        finally:
            ctu.ImmutableSandboxedEnvironment = template_limits.BoundedSandbox
            ctu._compile_jinja_template.cache_clear()
        assert bounded == plain, folder.name


# -- 3. a tokenizer that cannot encode ordinary text is refused --------------------------------------


def test_a_tokenizer_folder_without_tokenizer_json_is_refused(tmp_path):
    source = SHARED_TOKENIZERS / "SmolLM2-135M-Instruct"
    if not source.is_dir():
        pytest.skip("../shared/tokenizers missing")
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(source / name, folder / name)
    with pytest.raises(CollateError) as info:
        load_tokenizer(folder)
    message = str(info.value)
    assert str(folder) in message and "tokenizer.json" in message and "cannot encode ordinary text" in message
    write(tmp_path / "in" / "x.jsonl", GOOD)
    for engine in ([], ["--no-dagster"]):
        result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-t", str(folder), "-q", *engine,
                         home=tmp_path / "home")
        assert result.returncode == 1 and "tokenizer.json" in result.stderr
        assert not (tmp_path / "out" / "x.arrow").exists()


def test_a_tokenizer_that_maps_text_to_unknown_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "<|end|>": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]",
        "chat_template": "{% for m in messages %}{{ m.content }}<|end|>{% endfor %}",
    }))
    with pytest.raises(CollateError, match="cannot encode ordinary text: .* unknown") as info:
        load_tokenizer(folder)
    assert str(folder) in str(info.value)


# -- 4. one bad file does not stop the folder -------------------------------------------------------


@pytest.fixture(scope="module")
def engine_cases(tmp_path_factory) -> dict:
    """The cases of the small tests run on both paths (sections 4 and 8), side by side: {(case function, engine): future}."""
    functions = (_every_other_file_is_processed_and_each_failed_one_named, _json_and_non_tty_stderr_get_no_progress_bar,
                 _skipped_subfolders_are_counted, _two_inputs_with_the_same_stem_the_others_still_run)
    return side_by_side(tmp_path_factory, lambda folder, function, engine: function(folder, engine),
                        [(function, engine) for function in functions for engine in ENGINES])


@PATHS
def test_every_other_file_is_processed_and_each_failed_one_named(engine_cases, engine):
    engine_cases[case_key(_every_other_file_is_processed_and_each_failed_one_named, engine)].result()  # just below


def _every_other_file_is_processed_and_each_failed_one_named(tmp_path, engine):
    inputs = tmp_path / "in"
    write(inputs / "a_binary.jsonl", bytes(range(256)) * 64)
    write(inputs / "b_good.jsonl", GOOD)
    write(inputs / "c_truncated.jsonl.gz", gzip.compress(GOOD)[:-20])
    write(inputs / "d_good.jsonl", GOOD)
    result = collate("-i", str(inputs), "-o", str(tmp_path / "out"), "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 1
    assert (tmp_path / "out" / "b_good.arrow").is_file() and (tmp_path / "out" / "d_good.arrow").is_file()
    assert "b_good.arrow" in result.stdout and "d_good.arrow" in result.stdout
    tail = result.stderr.strip().splitlines()[-2:]
    assert "a_binary.jsonl" in tail[0] and "no usable conversation" in tail[0]
    assert "c_truncated.jsonl.gz" in tail[1] and "cannot read" in tail[1]


# -- 5. any legal file name ---------------------------------------------------------------------------

NAMES = {
    "250-bytes": b"a" * 244 + b".jsonl",
    "250-bytes-utf8": "é".encode() * 122 + b".jsonl",
    "non-utf8": b"caf\xe9 \xff.jsonl",
    "non-utf8-long": b"\xfe" * 240 + b".jsonl",
}


# The names are shortened and escaped by one function for both paths (core/write/writers.py fit_name,
# shown); through Dagster the two that need both (long and not UTF-8, long and multi-byte).
NAME_CASES = [([], "250-bytes-utf8"), ([], "non-utf8-long")] + [(["--no-dagster"], name) for name in NAMES]


@pytest.fixture(scope="module")
def file_name_cases(tmp_path_factory) -> dict:
    return side_by_side(tmp_path_factory, _any_legal_file_name_works_in_the_cli, NAME_CASES)


@pytest.mark.parametrize(
    "engine, name", NAME_CASES,
    ids=["dagster-250-bytes-utf8", "dagster-non-utf8-long"] + [f"no-dagster-{name}" for name in NAMES],
)
def test_any_legal_file_name_works_in_the_cli(file_name_cases, engine, name):
    file_name_cases[case_key(engine, name)].result()  # the case's run and assertions, just below


def _any_legal_file_name_works_in_the_cli(tmp_path, engine, name):
    raw = NAMES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), raw), "wb") as f:
        f.write(GOOD)
    result = collate("-i", str(folder), "-o", str(tmp_path / "out"), "--json", *engine, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    [stats] = json.loads(result.stdout)
    assert stats["tokenize"]["conversations"] == len(GOOD_LINES)
    names = os.listdir(os.fsencode(tmp_path / "out"))
    assert all(len(n) <= 255 for n in names)
    outputs = [n for n in names if n.endswith(b".arrow")]
    assert len(outputs) == 1 and (tmp_path / "out" / os.fsdecode(outputs[0])).stat().st_size > 0
    # A second run finds its outputs again (same shortened names): nothing to redo, same result.
    again = collate("-i", str(folder), "-o", str(tmp_path / "out"), "--json", *engine, home=tmp_path / "home")
    assert again.returncode == 0 and sorted(os.listdir(os.fsencode(tmp_path / "out"))) == sorted(names)


@pytest.mark.parametrize("name", list(NAMES))
def test_any_legal_file_name_works_as_a_partition(tmp_path, name):
    raw = NAMES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), raw), "wb") as f:
        f.write(GOOD)
    key = file_name_to_key(os.fsdecode(raw))
    with dg.instance_for_test() as instance:
        assert register_folder(instance, folder) == [key]
        result = materialize(instance, resources(folder, tmp_path / "out"), key)
        assert result.success, failure_text(result)
    written = [n for p in (tmp_path / "out").rglob("*") for n in [os.fsencode(p.name)]]
    assert written and all(len(n) <= 255 for n in written)


# -- 6. Ctrl-C and SIGTERM -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_input(tmp_path_factory) -> Path:
    """~12 MB of demo conversations: a run takes several seconds past its start."""
    folder = tmp_path_factory.mktemp("long") / "in"
    folder.mkdir()
    (folder / "big.jsonl").write_bytes((DEMO_INPUT_DIR / "demo.jsonl").read_bytes() * 40)
    return folder


def leftovers(out: Path, pid: int) -> list[str]:
    temps = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else []
    import tempfile

    workdirs = [p.name for p in Path(tempfile.gettempdir()).glob(f"collate-*-{pid}-*")]
    return temps + workdirs


MOMENTS = {
    "while-starting": lambda out: time.sleep(0.3),
    "while-writing": lambda out: wait_for(lambda: out.exists() and any(p.name.endswith(".tmp") for p in out.rglob("*"))),
}


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        time.sleep(0.01)


# (Ctrl-C while `--no-dagster` starts or writes, and while the Dagster path imports, already ended
# with 130: the cases below are the ones that did not.)
INTERRUPTS = [
    ("SIGINT", "dagster", "while-writing"),
    ("SIGTERM", "dagster", "while-starting"),  # (SIGTERM while writing: SIGINT's path, 143 for 130)
    ("SIGTERM", "no-dagster", "while-starting"),
    ("SIGTERM", "no-dagster", "while-writing"),
]


@pytest.mark.parametrize("sig_name, path, moment", INTERRUPTS, ids=["-".join(case) for case in INTERRUPTS])
def test_an_interrupt_at_any_moment_ends_the_run_cleanly(tmp_path, long_input, sig_name, path, moment):
    sig = getattr(signal, sig_name)
    code = {"SIGINT": 130, "SIGTERM": 143}[sig_name]
    engine = ["--no-dagster"] if path == "no-dagster" else []
    out = tmp_path / "out"
    home = tmp_path / "home"
    args = collate_command("-i", str(long_input), "-o", str(out), "-f", "jsonl", "-q", *engine)
    process = subprocess.Popen(args, env=subprocess_env(DAGSTER_HOME=str(home)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        MOMENTS[moment](out)
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1].startswith("collate: interrupted")
    assert "Dagster" not in err and "Traceback" not in err
    assert leftovers(out, process.pid) == []
    assert not (out / "big.jsonl").exists()  # the output appears only when complete
    if not engine and (home / "dagster.yaml").exists():  # (an interrupt while starting may come before it)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            open_runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            assert open_runs == []
    result = collate("-i", str(long_input), "-o", str(out), "-f", "jsonl", "-q", *engine, home=home)
    assert result.returncode == 0, result.stderr
    assert (out / "big.jsonl").is_file()


def test_ctrl_c_in_a_terminal_says_interrupted_while_dagster_captures_stderr(tmp_path, long_input):
    """A terminal sends Ctrl-C to the whole process group, which stops the `tail -F` that copies the
    run's captured stderr back: the message must still reach the command's own stderr."""
    out = tmp_path / "out"
    args = collate_command("-i", str(long_input), "-o", str(out), "-f", "jsonl", "-q")
    process = subprocess.Popen(args, env=subprocess_env(DAGSTER_HOME=str(tmp_path / "home")), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        MOMENTS["while-writing"](out)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "collate: interrupted" in err
    assert leftovers(out, process.pid) == []
    assert not (out / "big.jsonl").exists()


# -- 7. max_length ceiling; packing memory does not follow max_length ---------------------------------


@PATHS
@pytest.mark.parametrize("value", ["1000000000", str((1 << 24) + 1)])
def test_max_length_over_the_ceiling_is_an_argument_error(tmp_path, engine, value):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", value, "-q", *engine,
                     home=tmp_path / "home", timeout=60)
    assert result.returncode == 2 and "at most 16777216" in result.stderr
    with pytest.raises(ValueError, match="at most"):
        CollateSettings(max_length=int(value))
    with pytest.raises(CollateError, match="at most"):
        CollateConfig(max_length=int(value)).settings()


def test_packing_memory_does_not_grow_with_max_length():
    lengths = np.random.default_rng(0).integers(1, 5000, size=20000)
    peaks = {}
    for max_length in (8192, 1 << 20, 1 << 24):
        tracemalloc.start()
        bins = packing.pack_best_fit_decreasing(lengths, max_length)
        peaks[max_length] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(lengths[b].sum() <= max_length for b in bins)
    assert peaks[1 << 24] < 4 * peaks[8192] + (8 << 20), peaks


def test_best_fit_at_any_max_length_is_best_fit():
    """Large max_length (where a structure sized by max_length would not fit memory) packs as the
    quadratic reference best-fit does."""
    from collate_assets_tests.core.pack.test_packing import reference_bfd

    rng = np.random.default_rng(1)
    for _ in range(100):
        max_length = int(rng.choice([int(rng.integers(2, 400)), int(rng.integers(1 << 16, 1 << 24))]))
        lengths = rng.integers(1, max_length + 1, size=int(rng.integers(1, 200)))
        assert packing.pack_best_fit_decreasing(lengths, max_length) == reference_bfd(lengths.tolist(), max_length)


# -- 8. smaller things --------------------------------------------------------------------------------


@PATHS
def test_json_and_non_tty_stderr_get_no_progress_bar(engine_cases, engine):
    engine_cases[case_key(_json_and_non_tty_stderr_get_no_progress_bar, engine)].result()  # just below


def _json_and_non_tty_stderr_get_no_progress_bar(tmp_path, engine):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--json", *engine, home=tmp_path / "home")
    assert result.returncode == 0 and json.loads(result.stdout)
    assert "\r" not in result.stderr and "collate:" not in result.stderr.replace("collate: warning", "")
    # Without --json on a pipe: plain progress lines (every COLLATE_PROGRESS_SECONDS), never a bar.
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), *engine, home=tmp_path / "home",
                     COLLATE_PROGRESS_SECONDS="0")
    assert result.returncode == 0 and "\r" not in result.stderr
    assert any(line.startswith("collate: ") and "MB read" in line for line in result.stderr.splitlines())


@PATHS
def test_skipped_subfolders_are_counted(engine_cases, engine):
    engine_cases[case_key(_skipped_subfolders_are_counted, engine)].result()  # just below


def _skipped_subfolders_are_counted(tmp_path, engine):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    for sub in ("part1", "part2"):
        write(tmp_path / "in" / sub / "y.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 0
    assert "2 subfolders skipped" in result.stderr


def test_the_offline_hub_error_mentions_hf_hub_offline(tmp_path):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-t", "no-such-org/no-such-model", "-q",
                     "--no-dagster", home=tmp_path / "home")
    assert result.returncode == 1 and "HF_HUB_OFFLINE" in result.stderr.strip().splitlines()[-1]


@PATHS
def test_two_inputs_with_the_same_stem_the_others_still_run(engine_cases, engine):
    engine_cases[case_key(_two_inputs_with_the_same_stem_the_others_still_run, engine)].result()  # just below


def _two_inputs_with_the_same_stem_the_others_still_run(tmp_path, engine):
    write(tmp_path / "in" / "x.jsonl", GOOD)
    write(tmp_path / "in" / "x.jsonl.gz", gzip.compress(GOOD))
    write(tmp_path / "in" / "y.jsonl", GOOD)
    result = collate("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q", *engine, home=tmp_path / "home")
    assert result.returncode == 1
    assert (tmp_path / "out" / "x.arrow").is_file() and (tmp_path / "out" / "y.arrow").is_file()
    last = result.stderr.strip().splitlines()[-1]
    assert "x.jsonl.gz" in last and "not processed" in last and "overwrite" in last


def test_the_cli_parses_its_arguments_before_any_heavy_import():
    """The command takes its choices from the one settings definition, without importing numpy,
    pyarrow, transformers or Dagster first (so the signal handlers are in place at once)."""
    code = (
        "import sys; from collate_assets import cli; from collate_assets.core.settings import OUTPUT_FORMATS; "
        "args = cli.build_parser().parse_args(['-f', 'arrow,parquet', '-m', '512']); "
        "s = cli.settings_from_args(args); assert s.formats == ('arrow', 'parquet') and s.max_length == 512; "
        "heavy = [m for m in ('numpy', 'pyarrow', 'transformers', 'dagster') if m in sys.modules]; "
        "print(','.join(heavy) or 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"