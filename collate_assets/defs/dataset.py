"""All the definitions of one dataset, from its settings: assets, checks, sensors, job, resource.

The default dataset comes from the `COLLATE_*` environment variables (definitions.py); each dataset
Component (component.py) builds another one with its own key prefix, asset group, partitions and
resource, so several datasets (with different tokenizers, say) live in one code location.
"""

from __future__ import annotations

import os

import dagster as dg

from collate_assets.core import OUTPUT_FORMATS, CollateSettings

from .assets import Dataset, build_packed, build_raw_conversations, build_tokenized_conversations
from .automation import automation_sensor, collate_condition
from .resources import CollateConfig
from .sensors import build_input_files_sensor


DEFAULT_DATASET = "default"  # the name of the dataset of the COLLATE_* variables (no key prefix)


def default_settings() -> CollateSettings:
    """The default dataset: COLLATE_* variables, local folders made absolute from where the code location starts."""
    settings = CollateSettings.from_env()
    if "://" not in settings.output_dir:
        settings = settings.replace(output_dir=os.path.abspath(os.path.expanduser(settings.output_dir)))
    return settings


def dataset_assets(dataset: Dataset) -> list[dg.AssetsDefinition]:
    """raw_conversations, tokenized_conversations and packed_<format> for every format."""
    asked = set(dataset.settings.formats)
    packed = collate_condition(input_changed=False)  # packed assets follow tokenized_conversations
    return [
        build_raw_conversations(dataset),
        build_tokenized_conversations(dataset, collate_condition()),
        *(build_packed(dataset, fmt, packed if fmt in asked else None) for fmt in OUTPUT_FORMATS),
    ]


def asked_selection(dataset: Dataset) -> dg.AssetSelection:
    """tokenized_conversations and the packed assets of the formats asked for."""
    keys = [dataset.key("tokenized_conversations"), *(dataset.key(f"packed_{fmt}") for fmt in dataset.settings.formats)]
    return dg.AssetSelection.assets(*keys)


def build_dataset_defs(settings: CollateSettings, name: str | None = None) -> dg.Definitions:
    """Definitions for one dataset; `name` prefixes its asset keys and names its group (None: the default)."""
    dataset = Dataset(settings=settings, name=name)
    selection = asked_selection(dataset)
    return dg.Definitions(
        assets=dataset_assets(dataset),
        jobs=[
            dg.define_asset_job(
                name=dataset.op_name("collate_job"),
                selection=selection,
                description="Tokenize input files and write their packed rows in the formats asked for, with the blocking checks.",
            )
        ],
        sensors=[
            build_input_files_sensor(dataset),
            automation_sensor(dataset.op_name("collate_automation"), selection, settings.sensor_seconds, settings.automation),
        ],
        resources={dataset.resource_key: CollateConfig.from_settings(settings)},
    )
