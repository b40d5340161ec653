"""The Dagster layer: thin definitions over `collate_assets.core`, one module per kind.

    dataset.py      build_dataset_defs(settings, name): everything below for one dataset
    component.py    CollateDataset, the Component a `defs.yaml` declares a dataset with
    assets.py       raw_conversations -> tokenized_conversations -> packed_{arrow,parquet,msgpack,jsonl}
    checks.py       the blocking checks of every packed asset, run in its own step
    automation.py   the automation condition of every asset asked for, and its sensor
    sensors.py      the input files sensor: partitions and file observations
    partitions.py   one dynamic partition per input file, file name <-> key mapping
    resources.py    CollateConfig, the engine's settings as a resource
    files.py        where a dataset's inputs, outputs, rejects and spills are
    run.py          the `collate` command's in-process runs of stale partitions

`collate_assets.definitions.defs` puts them together.
"""
