"""What runs by itself: Dagster's declarative automation, evaluated by one sensor per dataset.

Every asset the dataset asks for (`tokenized_conversations` and `packed_<format>` for each format of
the `formats` setting) carries the same condition:

- a new file (a new partition, missing) or an edited one (its `raw_conversations` observation has a
  new data version) is tokenized and packed at the next evaluation, and nothing else;
- new settings or a new tokenizer (a new code version) rebuild every partition;
- each night at 02:00 partitions that are still missing (a failed run, an automation that was off)
  are tried again.

Packed formats not asked for carry no condition: they stay available in the UI. The sensor is
running by default, so `dagster dev` keeps the outputs current without a schedule of its own.
"""

import dagster as dg

NIGHTLY_CRON = "0 2 * * *"
EVALUATION_SECONDS = 30


def collate_condition(cron: str = NIGHTLY_CRON) -> dg.AutomationCondition:
    """eager (new, missing or updated upstream) | new code version | still missing after the nightly tick."""
    not_busy = ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.any_deps_in_progress()
    return (
        dg.AutomationCondition.eager()
        | (dg.AutomationCondition.code_version_changed() & not_busy).with_label("code version changed")
        | (
            dg.AutomationCondition.cron_tick_passed(cron)
            & dg.AutomationCondition.missing()
            & ~dg.AutomationCondition.any_deps_missing()
            & not_busy
        ).with_label(f"missing after {cron}")
    ).with_label("collate")


def automation_sensor(name: str, selection: dg.AssetSelection) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        name=name,
        target=selection,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=EVALUATION_SECONDS,
        description="Evaluates the datasets' automation conditions: new and edited files, new settings, nightly retries.",
    )
