"""The Dagster code location: `dagster dev -w workspace.yaml` or `-m collate_assets.definitions`."""

import dagster as dg

from collate_assets.defs.assets import PACKED_ASSETS, raw_conversations, tokenized_conversations
from collate_assets.defs.checks import PACKED_CHECKS
from collate_assets.defs.io_managers import io_managers
from collate_assets.defs.jobs import collate_job
from collate_assets.defs.resources import resources_from_env
from collate_assets.defs.schedules import nightly_collate
from collate_assets.defs.sensors import input_files_sensor

# The executor is Dagster's default (multiprocess): each step runs in its own process, so steps pass
# files (spill manifest, packed outputs), never in-memory objects.
defs = dg.Definitions(
    assets=[raw_conversations, tokenized_conversations, *PACKED_ASSETS.values()],
    asset_checks=PACKED_CHECKS,
    jobs=[collate_job],
    sensors=[input_files_sensor],
    schedules=[nightly_collate],
    resources={**resources_from_env(), **io_managers()},
)
