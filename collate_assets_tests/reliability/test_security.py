"""Security: untrusted chat templates, trust_remote_code, paths that could leave the configured folders, tokens.

- Chat templates render only in transformers' ImmutableSandboxedEnvironment. A template that names a Python
  internal is refused when the tokenizer loads; a SecurityError while rendering fails the file; what the
  sandbox quietly neutralises (undefined names, no loader for include/import) never reaches the host.
- trust_remote_code is off by default everywhere and logged when on.
- Partition keys and file names can only ever address a file directly inside the input folder, and outputs
  only land inside the output folder; symlinks leading out of the input folder are skipped and refused.
- An access token in the environment shows up nowhere: event log, metadata, stats, rejects, CLI output.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import subprocess
import unicodedata
from pathlib import Path

import dagster as dg
import orjson
import pytest

from collate_assets.cli import build_parser
from collate_assets.core import CollateError, CollateSettings, collate_file, list_input_files, load_tokenizer
from collate_assets.core import CollateSettings
from collate_assets.defs.files import DatasetFiles
from collate_assets.core.plan import file_name_to_key
from collate_assets.defs.partitions import INPUT_FILES, scan_input_folder
from collate_assets.defs.resources import CollateConfig
from collate_assets.defs.run import _failure_message
from collate_assets_tests.defs.helpers import ALL_FORMATS, arrow_defs, materialize, register_folder
from collate_assets.sample import DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import CORPUS_DIR, collate_command, subprocess_env

SECRET = "hf_secret_test_value"
GOOD = orjson.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
CHATML = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"


def _template(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "template.jinja"
    path.write_text("{% for message in messages %}" + CHATML + "{% endfor %}" + body, encoding="utf-8")
    return path


def _input(tmp_path: Path, lines: int = 3) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes((GOOD + b"\n") * lines)
    return path


def _everything_written(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# -- chat templates --------------------------------------------------------------------------------------


def test_transformers_renders_templates_in_the_immutable_sandbox(tokenizer):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils

    compiled = chat_template_utils._compile_jinja_template(tokenizer.chat_template)
    assert isinstance(compiled.environment, ImmutableSandboxedEnvironment)


REACHING_FOR_INTERNALS = {
    "class-mro": ("{{ messages.__class__.__mro__ }}", "__mro__"),
    "globals": ("{{ raise_exception.__globals__['os'].environ }}", "__globals__"),
    "cycler": ("{{ cycler.__init__.__globals__.os.environ['HF_TOKEN'] }}", "__globals__"),
    "template-reference": ("{{ self._TemplateReference__context }}", "_TemplateReference__context"),
    "attr-filter": ("{{ (messages|attr('__class__')) }}", "__class__"),
    "getitem": ("{{ lipsum['__globals__']['os'].popen('id').read() }}", "__globals__"),
    "subclasses": ("{{ ''.__class__.__base__.__subclasses__() }}", "__subclasses__"),
    "frame": ("{% for x in (1,) %}{{ loop.gi_frame }}{% endfor %}", "gi_frame"),
}


@pytest.mark.parametrize("name", list(REACHING_FOR_INTERNALS))
def test_a_template_reaching_for_python_internals_is_refused_when_loaded(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    body, attribute = REACHING_FOR_INTERNALS[name]
    template = _template(tmp_path, body)
    with pytest.raises(CollateError) as info:
        load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=template)
    message = str(info.value)
    assert repr(attribute) in message and "sandbox" in message and str(template) in message
    assert SECRET not in message


def test_a_template_shipped_with_the_tokenizer_is_checked_too(tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(DEMO_TOKENIZER_DIR, folder)
    (folder / "chat_template.jinja").write_text("{{ messages.__class__.__init__.__globals__ }}", encoding="utf-8")
    with pytest.raises(CollateError, match="chat template of .* reaches for '__globals__'.*sandbox"):
        load_tokenizer(folder)


def test_underscore_dict_keys_are_still_allowed():
    from collate_assets.core.tokens.tokenizer import check_chat_template

    check_chat_template("{% for m in messages %}{{ m._meta }}{{ m['_source'] }}{% endfor %}")  # plain keys


# Templates that pass the load-time check; the sandbox stops them while rendering.
SANDBOX_SECURITY_ERRORS = {
    "mutate-a-list": "{{ messages.pop() }}",
    "mutate-a-dict": "{% set d = dict(a=1) %}{{ d.update({'b': 2}) }}",
    "private-namespace-attribute": "{% set ns = namespace(_x=1) %}",
}


@pytest.mark.parametrize("name", list(SANDBOX_SECURITY_ERRORS))
def test_a_template_breaking_the_sandbox_on_a_probe_is_refused_at_load(name, tmp_path):
    template = _template(tmp_path, SANDBOX_SECURITY_ERRORS[name])
    with pytest.raises(CollateError, match="broke the Jinja sandbox's rules on a probe conversation") as info:
        load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=template)
    assert str(template) in str(info.value)


@pytest.mark.parametrize("name", list(SANDBOX_SECURITY_ERRORS))
def test_a_security_error_while_rendering_fails_the_file(name, tmp_path):
    # Only for a conversation the load-time probes do not have: the file fails when it meets it.
    body = "{% if messages[0].content == 'trigger' %}" + SANDBOX_SECURITY_ERRORS[name] + "{% endif %}{{ messages[0].content }}"
    tokenizer = load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=_template(tmp_path, body))
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"messages": [{"role": "user", "content": "trigger"}]}\n')
    with pytest.raises(CollateError) as info:
        collate_file(source, tmp_path / "out" / "in.arrow", tokenizer, CollateSettings(max_length=256))
    message = str(info.value)
    assert message.startswith(f"{source}:1: the chat template broke the Jinja sandbox's rules (SecurityError: ")
    assert not (tmp_path / "out" / "in.arrow").exists() and not (tmp_path / "out" / "in.rejects.jsonl").exists()


# Templates the sandbox neutralises without a SecurityError: an error per line, never the host's data.
NEUTRALISED = {
    "read-a-file": ("{% include '/etc/passwd' %}", "TypeError: no loader for this environment specified"),
    "import-a-module": ("{% import 'os' as os %}{{ os.environ }}", "TypeError: no loader for this environment"),
    "read-the-environment": ("{{ os.environ['HF_TOKEN'] }}", "UndefinedError: 'os' is undefined"),
    "huge-range": ("{{ range(10 ** 9) | list | length }}", "OverflowError: Range too big"),
}


@pytest.mark.parametrize("name", list(NEUTRALISED))
def test_a_template_trying_to_read_files_or_the_environment_only_gets_errors(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    body, reason = NEUTRALISED[name]
    tokenizer = load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=_template(tmp_path, body.replace("/etc/passwd", str(secret_file))))
    source = _input(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(CollateError) as info:
        collate_file(source, out / "in.arrow", tokenizer, CollateSettings(max_length=256))
    assert "no usable conversation" in str(info.value) and reason.split(":")[0] in str(info.value)
    rejects = [json.loads(line) for line in (out / "in.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [1, 2, 3]
    assert all(r["reason"].startswith(f"chat template error: {reason}") for r in rejects), rejects[0]
    assert SECRET.encode() not in _everything_written(out) and SECRET not in str(info.value)
    assert b"root:" not in _everything_written(out)


@pytest.mark.parametrize(
    "sneaky",
    [
        "{{ messages|attr('__cl' ~ 'ass__') }}",
        "{{ messages|attr('_'*2 ~ 'class' ~ '_'*2) }}",
        "{{ messages[('_' * 2) ~ 'class__'] }}",
        "{% set n = ['__', 'globals', '__']|join %}{{ cycler.__init__|attr(n) }}",
        "{{ (messages|attr('__cl' ~ 'ass__'))|attr('__in' ~ 'it__') }}",
    ],
)
def test_a_dunder_reached_dynamically_is_refused_like_a_static_one(tokenizer, sneaky):
    """Names built at render time dodge the load-time syntax check; the sandbox refuses them when
    rendering (SecurityError) instead of handing back an empty value."""
    from jinja2.exceptions import SecurityError
    from transformers.utils import chat_template_utils

    tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)  # bounded sandbox installed
    with pytest.raises(SecurityError, match="unsafe"):
        chat_template_utils._compile_jinja_template(sneaky).render(messages=[])


def test_a_template_exploit_fails_the_dagster_partition(tmp_path):
    template = _template(tmp_path, "{{ cycler.__init__.__globals__.os.environ }}")
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    (input_dir / "a.jsonl").write_bytes(GOOD + b"\n")
    resources = _resources(input_dir, tmp_path / "out", chat_template=str(template))
    with dg.instance_for_test() as instance:
        register_folder(instance, input_dir)
        result = _materialize(instance, resources, "a.jsonl")
        assert not result.success
        message = _failure_message(result, input_dir / "a.jsonl")
        assert "reaches for '__globals__'" in message and "sandbox" in message


# -- trust_remote_code -------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_by_default_everywhere(monkeypatch):
    assert inspect.signature(load_tokenizer).parameters["trust_remote_code"].default is False
    assert CollateConfig.model_fields["trust_remote_code"].default is False
    assert CollateConfig(tokenizer="x").trust_remote_code is False
    assert build_parser().parse_args([]).trust_remote_code is None  # left out: the variable, then False
    monkeypatch.delenv("COLLATE_TRUST_REMOTE_CODE", raising=False)
    assert CollateSettings.from_env().trust_remote_code is False
    monkeypatch.setenv("COLLATE_TRUST_REMOTE_CODE", "1")
    assert CollateSettings.from_env().trust_remote_code is True


def test_trust_remote_code_off_never_runs_the_repository_code(tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(DEMO_TOKENIZER_DIR, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    try:
        load_tokenizer(folder)
    except CollateError:
        pass  # refusing to load is fine too; running the code is not
    assert not marker.exists()


def test_turning_trust_remote_code_on_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        load_tokenizer(DEMO_TOKENIZER_DIR, trust_remote_code=True)
    assert any(r.levelno == logging.WARNING and "trust_remote_code is ON" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_tokenizer(DEMO_TOKENIZER_DIR)
    assert "trust_remote_code" not in caplog.text


def test_trust_remote_code_on_is_logged_in_the_run(tmp_path):
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    (input_dir / "a.jsonl").write_bytes(GOOD + b"\n")
    resources = _resources(input_dir, tmp_path / "out", trust_remote_code=True)
    with dg.instance_for_test() as instance:
        register_folder(instance, input_dir)
        result = _materialize(instance, resources, "a.jsonl")
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("trust_remote_code is ON" in m for m in messages)


# -- paths: keys, file names, symlinks ---------------------------------------------------------------------


def _resources(input_dir: Path, output_dir: Path, **settings) -> dg.Definitions:
    return arrow_defs(input_dir, output_dir, **settings)


def _materialize(instance, resources, key, assets=("tokenized_conversations", "packed_arrow")) -> dg.ExecuteInProcessResult:
    return materialize(resources, instance, key, assets=list(assets), raise_on_error=False)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def sandbox(tmp_path):
    """root/{a/b/in, a/b/out} with decoys where `..` and absolute keys would lead."""
    root = tmp_path / "root"
    input_dir, output_dir = root / "a" / "b" / "in", root / "a" / "b" / "out"
    input_dir.mkdir(parents=True)
    (input_dir / "good.jsonl").write_bytes(GOOD + b"\n")
    for decoy in (root / "x.jsonl", root / "a" / "x.jsonl", root / "a" / "b" / "x.jsonl", root / "etc" / "passwd"):
        decoy.parent.mkdir(parents=True, exist_ok=True)
        decoy.write_bytes(GOOD + b"\n")
    return root, input_dir, output_dir


EVIL_KEYS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2Fx.jsonl",
    "..%2Fx.jsonl",
    "%2Fetc%2Fpasswd",
    "..",
    ".%2E",
    ".",
    "a/b.jsonl",
    "../x.jsonl",
    "..%2F",
    "x%00.jsonl",
    "%00",
    "good.jsonl%2F..%2F..%2Fx.jsonl",
    "%2E%2E%2Fx.jsonl",
    "x.jsonl%0A",  # "x.jsonl\n": not an input file name (it would share x.jsonl's outputs)
    "notes.txt",
    "\u202egood.jsonl",
    "good.jsonl\u0000",
]


MATERIALIZED_EVIL_KEYS = {"..%2F..%2F..%2Fx.jsonl", "%2Fetc%2Fpasswd", ".%2E", "x%00.jsonl", "a/b.jsonl"}


def test_evil_partition_keys_read_and_write_nothing_outside(sandbox):
    root, input_dir, output_dir = sandbox
    paths = DatasetFiles(CollateSettings(input_dir=str(input_dir), output_dir=str(output_dir)))
    for key in EVIL_KEYS:
        with pytest.raises(CollateError):
            paths.input_path(key)
        with pytest.raises(CollateError):
            paths.output_path(key, "arrow")
        with pytest.raises(CollateError):
            paths.rejects_path(key)
    # Escapes are decoded once: this is the key of a file literally named "%2E%2E%2Fx.jsonl", in the folder.
    assert paths.input_path("%252E%252E%252Fx.jsonl") == input_dir / "%2E%2E%2Fx.jsonl"
    before = _snapshot(root)
    resources = _resources(input_dir, output_dir)
    with dg.instance_for_test() as instance:
        accepted = []
        for key in EVIL_KEYS:
            try:
                instance.add_dynamic_partitions(INPUT_FILES.name, [key])
                accepted.append(key)
            except Exception:  # Dagster refusing a key is fine too
                continue
        assert len(accepted) >= len(EVIL_KEYS) - 3, accepted
        # Real runs (every packed format) for a sample of them; DatasetFiles refused them all above.
        for key in [k for k in accepted if k in MATERIALIZED_EVIL_KEYS]:
            result = _materialize(instance, resources, key,
                                  assets=("tokenized_conversations", *(f"packed_{fmt}" for fmt in ALL_FORMATS)))
            assert not result.success, key
            message = _failure_message(result, input_dir / "?")
            assert "partition" in message and "key" in message, (key, message)
    # Nothing read outside produced anything, nothing was written anywhere.
    assert _snapshot(root) == before


def test_odd_but_valid_names_stay_inside_the_folders(sandbox):
    root, input_dir, output_dir = sandbox
    names = [
        "evil\u202egpj.jsonl",  # right-to-left override
        unicodedata.normalize("NFC", "caf\u00e9.jsonl"),
        unicodedata.normalize("NFD", "caf\u00e9.jsonl"),  # looks the same, other bytes: another file
        "...jsonl",  # stem ".."
        "..jsonl",  # stem "."
    ]
    for name in names:
        (input_dir / name).write_bytes(GOOD + b"\n")
    before = _snapshot(root)
    resources = _resources(input_dir, output_dir)
    with dg.instance_for_test() as instance:
        keys = register_folder(instance, input_dir)
        assert sorted(keys) == sorted(file_name_to_key(n) for n in [*names, "good.jsonl"])
        assert len(set(keys)) == len(keys)
        assert all(k.isascii() and "/" not in k and ".." not in k for k in keys)
        for key in keys:
            assert _materialize(instance, resources, key).success, key
    after = _snapshot(root)
    new = set(after) - set(before)
    out_rel = output_dir.relative_to(root)
    assert all(Path(p).is_relative_to(out_rel) for p in new), sorted(new)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing outside changed
    packed = sorted(p.name for p in output_dir.iterdir() if p.is_file() and p.name.endswith(".arrow"))
    assert len(packed) == len(keys)  # NFC and NFD names: two outputs, none overwritten
    assert "....arrow" not in packed and "...arrow" in packed and "..arrow" in packed


@pytest.fixture
def linked_input(tmp_path):
    """An input folder with a symlink leading outside it, one inside it, and a real file."""
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "data.jsonl").write_bytes(GOOD.replace(b"Hello!", SECRET.encode()) + b"\n")
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    (input_dir / "real.jsonl").write_bytes(GOOD + b"\n")
    (input_dir / "outside.jsonl").symlink_to(outside / "data.jsonl")
    (input_dir / "relative.jsonl").symlink_to(Path("..") / "private" / "data.jsonl")
    (input_dir / "inside.jsonl").symlink_to("real.jsonl")
    return input_dir


def test_symlinks_leading_outside_are_skipped_by_the_scan(linked_input, caplog):
    files, warnings = scan_input_folder(linked_input)
    assert sorted(files) == ["inside.jsonl", "real.jsonl"]
    assert sorted(w.split(":")[0] for w in warnings) == ["outside.jsonl skipped", "relative.jsonl skipped"]
    assert all("outside the input folder" in w for w in warnings)
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_input_files(linked_input)] == ["inside.jsonl", "real.jsonl"]
    assert "outside.jsonl skipped" in caplog.text
    with dg.instance_for_test() as instance, caplog.at_level(logging.WARNING):
        assert register_folder(instance, linked_input) == ["inside.jsonl", "real.jsonl"]


def test_a_symlink_leading_outside_is_refused_when_materialized(linked_input, tmp_path):
    output_dir = tmp_path / "out"
    resources = _resources(linked_input, output_dir)
    with dg.instance_for_test() as instance:
        register_folder(instance, linked_input)
        instance.add_dynamic_partitions(INPUT_FILES.name, ["outside.jsonl", "relative.jsonl"])
        for key in ("outside.jsonl", "relative.jsonl"):
            result = _materialize(instance, resources, key)
            assert not result.success
            message = _failure_message(result, linked_input / key)
            assert "outside the input folder" in message and "refused" in message
        assert _materialize(instance, resources, "inside.jsonl").success
    assert SECRET.encode() not in _everything_written(output_dir)
    assert sorted(p.name for p in output_dir.iterdir() if p.name.endswith(".arrow")) == ["inside.arrow"]


def test_an_input_folder_that_is_itself_a_symlink_works(tmp_path):
    real = tmp_path / "real_in"
    real.mkdir()
    (real / "a.jsonl").write_bytes(GOOD + b"\n")
    (tmp_path / "link_in").symlink_to(real)
    resources = _resources(tmp_path / "link_in", tmp_path / "out")
    with dg.instance_for_test() as instance:
        assert register_folder(instance, tmp_path / "link_in") == ["a.jsonl"]
        assert _materialize(instance, resources, "a.jsonl").success


# -- no access tokens in anything a run leaves ------------------------------------------------------------


def _mixed_input(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORPUS_DIR / "broken_json.jsonl", folder / "broken_json.jsonl")
    shutil.copyfile(CORPUS_DIR / "truncated.jsonl.gz", folder / "truncated.jsonl.gz")
    return folder


def test_hf_token_appears_nowhere_in_a_dagster_run(tmp_path, monkeypatch):
    from dagster._serdes import serialize_value

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    input_dir = _mixed_input(tmp_path / "in")
    output_dir = tmp_path / "out"
    resources = _resources(input_dir, output_dir)
    with dg.instance_for_test() as instance:
        keys = register_folder(instance, input_dir)
        results = [_materialize(instance, resources, key) for key in keys]
        assert [r.success for r in results] == [True, False]  # the truncated gzip fails, with its error logged
        blobs = []
        for result in results:
            blobs += [serialize_value(record) for record in instance.all_logs(result.run_id)]
            blobs.append(serialize_value(instance.get_run_by_id(result.run_id)))
        for key in keys:
            for asset in ("tokenized_conversations", "packed_arrow"):
                event = instance.get_latest_materialization_event(dg.AssetKey(asset))
                blobs.append(serialize_value(event) if event else "")
        text = "\n".join(blobs)
        assert "broken_json.jsonl" in text and "cannot read after line" in text  # the logs were read
        assert SECRET not in text
    assert SECRET.encode() not in _everything_written(output_dir)


def test_hf_token_appears_nowhere_in_the_cli_run(tmp_path):
    """`collate` through Dagster with HF_TOKEN set: not in its output, its DAGSTER_HOME or its output folder."""
    input_dir = _mixed_input(tmp_path / "in")
    (input_dir / "truncated.jsonl.gz").unlink()
    home, out = tmp_path / "dagster_home", tmp_path / "out"
    env = subprocess_env(HF_TOKEN=SECRET, HUGGING_FACE_HUB_TOKEN=SECRET, DAGSTER_HOME=str(home))
    proc = subprocess.run(collate_command("-q", "--json", "-i", str(input_dir), "-o", str(out), "-m", "256"),
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout[proc.stdout.index("[") :])
    assert stats[0]["tokenize"]["rejected"] == 5
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    assert (out / "broken_json.rejects.jsonl").is_file()
    assert SECRET.encode() not in _everything_written(out)
    assert SECRET.encode() not in _everything_written(home)  # run storage, event logs, compute logs
    assert any(p.suffix == ".db" for p in home.rglob("*"))  # (there was something to search)
