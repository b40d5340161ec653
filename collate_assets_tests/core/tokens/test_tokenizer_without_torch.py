"""In collate's own processes (the `collate` command, the code location) tokenizers load without PyTorch,
which transformers imports only because it is installed. The tokenizer must be the same one: the same
class, the same rendered text and the same token ids for every conversation, with and without it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from collate_assets.sample import DEMO_TOKENIZER_DIR
from collate_assets_tests.helpers import SHARED_DATA_FILES, SHARED_DIR, TOKENIZER_NAMES, subprocess_env

# Loads every tokenizer given with the engine's loader, renders and encodes the shared conversations and
# prints what it got, and whether PyTorch was imported.
_LOAD_AND_ENCODE = """
import hashlib, json, sys
from collate_assets.core import load_tokenizer
from collate_assets.core.tokens.tokenizer import own_process
from collate_assets_tests.helpers import as_role_content

if sys.argv[1] == "own":
    own_process()
records = [r for path in json.loads(sys.argv[2]) for r in json.load(open(path, encoding="utf-8"))[:40]]
out = {}
for folder in json.loads(sys.argv[3]):
    tokenizer = load_tokenizer(folder)
    seen = hashlib.sha256(type(tokenizer).__name__.encode())
    for record in records:
        conversation = as_role_content(record)
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        seen.update(text.encode())
        seen.update(json.dumps(tokenizer(text, add_special_tokens=False)["input_ids"]).encode())
        seen.update(json.dumps(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]).encode())
    out[folder] = seen.hexdigest()
print(json.dumps({"torch": "torch" in sys.modules, "digests": out}))
"""


def test_a_tokenizer_loaded_without_torch_renders_and_encodes_the_same():
    folders = [str(DEMO_TOKENIZER_DIR)] + [
        str(SHARED_DIR / "tokenizers" / name) for name in TOKENIZER_NAMES if (SHARED_DIR / "tokenizers" / name).is_dir()
    ]
    data = [str(SHARED_DIR / rel) for rel in SHARED_DATA_FILES.values() if (SHARED_DIR / rel).is_file()]
    if not data:
        pytest.skip(f"no shared data under {SHARED_DIR}")
    results = {}
    for mode in ("own", "library"):
        proc = subprocess.run([sys.executable, "-c", _LOAD_AND_ENCODE, mode, json.dumps(data), json.dumps(folders)],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "PyTorch was not found" not in proc.stderr
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["own"]["torch"] is False
    if importlib.util.find_spec("torch") is not None:
        assert results["library"]["torch"] is True  # a library user's process is left as it was
    assert results["own"]["digests"] == results["library"]["digests"]
    assert len(results["own"]["digests"]) == len(folders)
