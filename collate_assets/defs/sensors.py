"""`input_files_sensor`: turn files appearing in the input folder into partitions and runs.

Every 30 s it lists the input folder (not its subfolders) and
- adds a partition for each new file and requests a `collate_job` run for it;
- deletes the partition of a file that disappeared (its outputs and history are left in place);
- records a `raw_conversations` observation (the file's sha256) for new and changed files, so the
  UI shows their downstream partitions as stale at once. Changed files are rebuilt by
  `nightly_collate` (or by materializing them from the UI), not by this sensor.
The cursor remembers each file's size, mtime and sha256, so unchanged files are not read again.
A missing input folder skips the tick without deleting any partition.
"""

import json

import dagster as dg

from collate_assets.core import file_sha256

from .jobs import collate_job
from .lineage import latest_observed_sha256, raw_observation
from .partitions import INPUT_FILES, scan_input_folder
from .resources import CollatePaths


@dg.sensor(
    job=collate_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new input file as a partition and runs collate_job for it; drops deleted files.",
)
def input_files_sensor(context: dg.SensorEvaluationContext, paths: CollatePaths) -> dg.SensorResult:
    files, warnings = scan_input_folder(paths.input_dir)
    for warning in warnings:
        context.log.warning(warning)
    if not files and warnings:
        return dg.SensorResult(skip_reason="; ".join(warnings), cursor=context.cursor)

    known = set(context.instance.get_dynamic_partitions(INPUT_FILES.name))
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    next_seen: dict[str, list] = {}
    observations = []
    for key, path in files.items():
        stat = path.stat()
        signature = [stat.st_size, stat.st_mtime_ns]
        previous = seen.get(key)
        if previous and previous[:2] == signature:
            next_seen[key] = previous
            continue
        sha = file_sha256(path)
        next_seen[key] = [*signature, sha]
        last_sha = previous[2] if previous else latest_observed_sha256(context.instance, key)
        if sha != last_sha:
            observations.append(raw_observation(key, path, sha))

    new = [key for key in files if key not in known]
    gone = sorted(known - set(files))
    requests = []
    if new:
        requests.append(dg.AddDynamicPartitionsRequest(INPUT_FILES.name, new))
    if gone:
        context.log.info(f"input files gone, dropping their partitions: {', '.join(gone)}")
        requests.append(dg.DeleteDynamicPartitionsRequest(INPUT_FILES.name, gone))
    runs = [dg.RunRequest(partition_key=key, run_key=f"{key}@{next_seen[key][2][:16]}") for key in new]
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=requests,
        asset_events=observations,
        cursor=json.dumps(next_seen, sort_keys=True),
        skip_reason=None if (runs or requests or observations) else "no new, changed or deleted input file",
    )
