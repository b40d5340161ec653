"""Load a Hugging Face fast tokenizer with a chat template, from the hub or a local folder."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .errors import CollateError

log = logging.getLogger(__name__)


def load_tokenizer(
    name_or_path: str | Path,
    revision: str | None = None,
    chat_template: str | Path | None = None,
    trust_remote_code: bool = False,
):
    """Load `name_or_path` (hub id `org/name` or a local folder) as a fast tokenizer.

    `chat_template` is a path to a Jinja file that replaces the tokenizer's own template.
    A tokenizer without a chat template (and no file given) is an error: we would not know
    how to render conversations.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if trust_remote_code:
        log.warning("trust_remote_code is ON for tokenizer %s: its repository code will run", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code, use_fast=True
        )
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HF errors)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CollateError(f"cannot load tokenizer {name!r}: {first_line}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise CollateError(f"tokenizer {name!r} has no fast (Rust) implementation; collate needs one")
    if chat_template is not None:
        template_path = Path(chat_template)
        try:
            tokenizer.chat_template = template_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CollateError(f"cannot read chat template {template_path}: {exc.strerror or exc}") from exc
    if not tokenizer.chat_template:
        raise CollateError(
            f"tokenizer {name!r} has no chat template; give one with --chat-template FILE "
            "(or COLLATE_CHAT_TEMPLATE)"
        )
    if not isinstance(tokenizer.chat_template, str):
        raise CollateError(
            f"tokenizer {name!r} has several named chat templates; give the one to use with --chat-template FILE"
        )
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what decides the tokens: the tokenizer's JSON and its chat template."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(b"\0")
    digest.update((tokenizer.chat_template or "").encode("utf-8"))
    return digest.hexdigest()[:16]
