"""The Dagster code location: `dagster dev -w workspace.yaml` or `-m collate_assets.definitions`.

The default dataset comes from the `COLLATE_*` environment variables (the demo sample and tokenizer
when none is set); every `defs.yaml` of a dataset Component under `$COLLATE_DATASETS_DIR` adds one
more dataset with its own key prefix and asset group.
"""

from pathlib import Path

import dagster as dg

from collate_assets.core.settings import LocationSettings
from collate_assets.core.tokens.tokenizer import own_process
from collate_assets.defs.dataset import build_dataset_defs, default_settings
from collate_assets.executors import executor

# This module is the code location: its processes (code server, run workers) are collate's own, so
# tokenizers load there without PyTorch (see core.tokens.tokenizer).
own_process()

# Each run is one process with its steps in it: the tokenizer loads once per run, and a run of one
# small file costs one process start instead of one per step. COLLATE_EXECUTOR=celery hands each step
# to Celery workers instead (collate_assets/executors.py, docs/cluster.md).
EXECUTOR = executor()


def build_definitions() -> dg.Definitions:
    parts = [build_dataset_defs(default_settings())]
    datasets_dir = LocationSettings.from_env().datasets_dir
    if datasets_dir:
        from collate_assets.defs.component import load_datasets

        parts.append(load_datasets(Path(datasets_dir)))
    return dg.Definitions.merge(*parts, dg.Definitions(executor=EXECUTOR))


defs = build_definitions()
