"""The input files sensor: the input folder's files as partitions, and their observations.

Every `sensor_seconds` (30 by default) it lists the dataset's input folder (not its subfolders) and
- adds a partition for each new file, deletes the partition of a file that disappeared from its
  folder (its outputs and history are left in place). Only partitions whose file was observed in
  this folder are ever deleted: a partition registered for another folder is left alone;
- records a `raw_conversations` observation (the file's sha256 as data version) for each new or
  changed file. A file split into shards (`shard_mb`) is one partition per shard, each observed with
  the whole file's sha256, so editing the file reruns all its shards; when its shard count changes,
  the old shards' partitions go and the new ones come. What then runs is decided by the assets' automation conditions (automation.py).
Whether a file changed is judged from the size and modification time recorded on its latest
observation, so an unchanged file is not read again. A missing input folder skips the tick
without deleting any partition.
"""


from pathlib import Path

import dagster as dg

from collate_assets.core import file_sha256
from collate_assets.core.read.reader import input_folder_and_pattern

from .assets import Dataset
from .partitions import scan_input_folder

DATA_VERSION_TAG = "dagster/data_version"


def latest_observation(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str) -> dg.AssetObservation | None:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    return records[0].asset_observation if records else None


def observed_as_now(observation: dg.AssetObservation | None, stat) -> bool:
    """Whether `observation` saw the file as `stat` shows it now (same size and mtime): then its data
    version is the file's sha256 without reading the file again."""
    if observation is None:
        return False
    seen = {name: observation.metadata[name].value for name in ("size_bytes", "mtime_ns") if name in observation.metadata}
    return seen == {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def sha256_now(instance: dg.DagsterInstance, asset_key: dg.AssetKey, key: str, path: Path, hashes: dict[Path, str]) -> str:
    """The sha256 of the file of partition `key` as it is now: its latest observation's data version
    when that saw the file as it is (`observed_as_now`), else read (once per path in `hashes`)."""
    observation = latest_observation(instance, asset_key, key)
    if observed_as_now(observation, path.stat()) and observation.tags.get(DATA_VERSION_TAG):
        return observation.tags[DATA_VERSION_TAG]
    return hashes.get(path) or hashes.setdefault(path, file_sha256(path))


def file_observations(instance: dg.DagsterInstance, asset_key: dg.AssetKey, files: dict[str, Path]) -> list[dg.AssetObservation]:
    """An observation for each file whose size, mtime or content differ from its latest observation."""
    events = []
    hashes: dict[Path, str] = {}  # the shards of a split file share its sha256: read it once
    for key, path in files.items():
        stat = path.stat()
        previous = latest_observation(instance, asset_key, key)
        if observed_as_now(previous, stat):
            continue
        sha = hashes.get(path) or hashes.setdefault(path, file_sha256(path))
        metadata = {"path": dg.MetadataValue.path(str(path)), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if previous is not None and previous.tags.get(DATA_VERSION_TAG) == sha:
            # touched, same bytes: record the new mtime without a new data version (nothing is stale)
            events.append(dg.AssetObservation(asset_key=asset_key, partition=key, metadata=metadata,
                                              tags={DATA_VERSION_TAG: sha}))
            continue
        events.append(dg.AssetObservation(asset_key=asset_key, partition=key, tags={DATA_VERSION_TAG: sha}, metadata=metadata))
    return events


def ours(instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: list[str], folder: Path) -> list[str]:
    """The partitions among `keys` whose latest observed file was in `folder` (the sensor's own)."""
    folder = Path(folder).expanduser().resolve()
    out = []
    for key in keys:
        observation = latest_observation(instance, asset_key, key)
        entry = observation.metadata.get("path") if observation is not None else None
        if entry is not None and Path(str(entry.value)).expanduser().parent.resolve() == folder:
            out.append(key)
    return out


def build_input_files_sensor(dataset: Dataset) -> dg.SensorDefinition:
    partitions = dataset.partitions
    raw_key = dataset.key("raw_conversations")

    @dg.sensor(
        name=dataset.op_name("input_files_sensor"),
        minimum_interval_seconds=dataset.settings.sensor_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={dataset.resource_key},
        description="Adds a partition for each new input file, drops deleted ones, and observes new or changed files.",
    )
    def input_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        settings = getattr(context.resources, dataset.resource_key).settings()
        files, warnings = scan_input_folder(settings.input_path(), settings.shard_bytes())
        for warning in warnings:
            context.log.warning(warning)
        if not files and warnings:
            return dg.SensorResult(skip_reason="; ".join(warnings))
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [key for key in files if key not in known]
        gone = sorted(known - set(files))
        requests = []
        if new:
            requests.append(partitions.build_add_request(new))
        gone = ours(context.instance, raw_key, gone, input_folder_and_pattern(settings.input_path())[0])
        if gone:
            context.log.info(f"input files gone, dropping their partitions: {', '.join(gone)}")
            requests.append(partitions.build_delete_request(gone))
        observations = file_observations(context.instance, raw_key, files)
        return dg.SensorResult(
            dynamic_partitions_requests=requests,
            asset_events=observations,
            skip_reason=None if (requests or observations) else "no new, changed or deleted input file",
        )

    return input_files_sensor
