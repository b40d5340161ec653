"""`CollateConfig`: the engine's settings as a Dagster resource.

The resource is generated from the fields of `collate_assets.core.CollateSettings` (same names,
defaults, help texts), so there is one definition of every setting; `settings()` hands the engine
the validated `CollateSettings`. A dataset's resource is built from its settings (for the default
dataset: the `COLLATE_*` environment variables read when the code location loads; for a dataset
Component: its YAML), and a run may override fields in the launchpad:

    resources:
      collate:
        config: {max_length: 4096, labels: assistant}

Dagster replaces a resource's whole config when a run gives any of it: fields left out fall back
to the defaults of `CollateSettings`, not to the dataset's values, so repeat the ones you keep. A
run whose settings differ from the dataset's records them in its metadata; the code versions (what
decides staleness) follow the dataset's settings.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field

from collate_assets.core import CollateError, CollateSettings, load_tokenizer
from collate_assets.core.tokens.encoder import worth_preloading
from collate_assets.core.settings import env_name, field_type, settings_fields

from .files import DatasetFiles

def _config_field(field: dataclasses.Field) -> tuple[Any, Any]:
    """A setting as a config field: its type (a Literal of choices is an enum in the launchpad), default and help."""
    if field.name == "formats":
        return list[str], Field(default=list(field.default), description=field.metadata["help"])  # (Dagster config has no list of Literal)
    help_text = f"{field.metadata['help']} (environment: {env_name(field.name)})"
    return field_type(field), Field(default=field.default, description=help_text)


class _CollateConfigBase(dg.ConfigurableResource):
    """Every collate setting (see `collate_assets.core.CollateSettings`)."""

    def settings(self) -> CollateSettings:
        """The engine's settings; a bad value raises CollateError naming the allowed ones."""
        values = {f.name: getattr(self, f.name) for f in settings_fields()}
        try:
            return CollateSettings(**values)
        except ValueError as exc:
            raise CollateError(f"collate settings: {exc}") from exc

    def files(self) -> DatasetFiles:
        return DatasetFiles(self.settings())

    def load_tokenizer(self, inputs=()):
        """The tokenizer and chat template of these settings, loaded once per process (with the fast
        encoder loading beside it when `inputs`, the files about to be tokenized, are worth it)."""
        settings = self.settings()
        if settings.trust_remote_code:  # said in every run that uses it, loaded or not
            dg.get_dagster_logger().warning(
                f"trust_remote_code is ON for tokenizer {settings.tokenizer_name()!r}: its repository code will run"
            )
        return cached_tokenizer(settings, worth_preloading(settings.encoder, inputs))

    @classmethod
    def from_settings(cls, settings: CollateSettings) -> "_CollateConfigBase":
        values = settings.as_dict()
        return cls(**values)


CollateConfig: type[_CollateConfigBase] = pydantic.create_model(  # type: ignore[assignment]
    "CollateConfig",
    __base__=_CollateConfigBase,
    __doc__="Every collate setting: input, output, tokenizer, chat template, labels, packing, formats.",
    **{field.name: _config_field(field) for field in settings_fields()},
)

# Loading a tokenizer takes seconds (transformers' import, the vocabulary, the template probes): a
# process that runs several steps or runs (the `collate` command, an in-process run) loads it once.
_TOKENIZERS: dict[tuple, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def cached_tokenizer(settings: CollateSettings, preload_fast: bool = False):
    key = (
        settings.tokenizer_name(), settings.tokenizer_revision, settings.chat_template,
        settings.trust_remote_code, settings.render_timeout, settings.render_max_chars, settings.tokenizer_pipeline,
    )
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = load_tokenizer(
                settings.tokenizer_name(),
                revision=settings.tokenizer_revision,
                chat_template=settings.chat_template,
                trust_remote_code=settings.trust_remote_code,
                render_limits=settings.render_limits(),
                tokenizer_pipeline=settings.tokenizer_pipeline,
                preload_fast=preload_fast,
            )
        return _TOKENIZERS[key]
