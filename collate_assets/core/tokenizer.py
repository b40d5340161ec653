"""Load a Hugging Face fast tokenizer with a chat template, from the hub or a local folder.

Chat templates are untrusted code. transformers renders them in Jinja's ImmutableSandboxedEnvironment,
where reaching for Python internals (`x.__class__`, `f.__globals__`, a name-mangled private) gives an
undefined value that renders as nothing, or a SecurityError. So that such a template fails loudly
instead of silently rendering something else, `load_tokenizer` also reads the template's syntax tree
and refuses one that names such an attribute; a SecurityError raised while rendering fails the file
(see `collate_assets.core.api`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .errors import CollateError

log = logging.getLogger(__name__)

# Attributes no chat template has a use for: the ways out of a Jinja sandbox go through these.
_FORBIDDEN_ATTRIBUTES = frozenset(
    {"mro", "func_globals", "func_code", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame",
     "ag_code", "tb_frame", "tb_next", "f_globals", "f_locals", "f_builtins", "f_back", "co_code"}
)


def _forbidden(attribute: object) -> bool:
    if not isinstance(attribute, str):
        return False
    # Dunders, and name-mangled privates such as `_TemplateReference__context`. A single leading
    # underscore alone is allowed: `message._meta` may be a plain dict key.
    return attribute.startswith("__") or (attribute.startswith("_") and "__" in attribute) or (
        attribute in _FORBIDDEN_ATTRIBUTES
    )


def check_chat_template(source: str, name: str = "chat template") -> None:
    """Raise CollateError if the template names a Python internal (`__class__`, `__globals__`, ...).

    A template that does not parse is left to rendering, which reports the syntax error per line.
    """
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):  # transformers' {% generation %} block, parsed for its body only
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols", _Generation])
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError:
        return
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attribute = node.attr
        elif isinstance(node, nodes.Getitem):
            attribute = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            attribute = node.args[0].value
        else:
            continue
        if _forbidden(attribute):
            raise CollateError(
                f"{name} reaches for {attribute!r} (line {node.lineno}), a Python internal that the Jinja "
                "sandbox forbids (SecurityError); refusing to use this template"
            )


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
    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise CollateError(f"tokenizer folder not found: {name}")
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
    where = f"chat template {chat_template}" if chat_template is not None else f"chat template of {name!r}"
    check_chat_template(tokenizer.chat_template, where)
    return tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what decides the tokens: the tokenizer's JSON and its chat template."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(b"\0")
    digest.update((tokenizer.chat_template or "").encode("utf-8"))
    return digest.hexdigest()[:16]
