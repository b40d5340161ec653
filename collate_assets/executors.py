"""Which executor runs the steps of a run: in the run's own process (the default) or on Celery workers.

    COLLATE_EXECUTOR=in_process          one process per run, its steps in it (the default)
    COLLATE_EXECUTOR=celery              each step is a task of dagster-celery's `celery_executor`,
                                         run by whichever `dagster-celery worker` takes it
    COLLATE_CELERY_BROKER                broker URL (default redis://localhost:6379/0)
    COLLATE_CELERY_BACKEND               result backend URL (default: the broker's)
    COLLATE_CELERY_VISIBILITY_TIMEOUT    seconds after which a task taken by a worker that vanished
                                         (a killed machine) is given to another worker (default 3600;
                                         keep it above the longest step, see below)

The workers take their Celery settings from the same variables: `python -m collate_assets.executors
celery-yaml > celery.yaml`, then `dagster-celery worker start -A dagster_celery.app -y celery.yaml`
(docs/cluster.md). They also need the code location's COLLATE_* variables, the same DAGSTER_HOME and
the input, output and spill folders at the same paths.

A worker lost in the middle of a step. dagster-celery's loop turns a task that failed outside the step
(Celery's WorkerLostError) into a run failure, with no step failure event, so a Dagster RetryPolicy
never sees it. Celery's own redelivery is what brings the step back, and these settings turn it on:

- `task_acks_late`: a task's message is acknowledged when the step has finished, not when a worker
  takes it. A worker whose whole process tree dies (kill -9 of the worker, a lost machine) leaves the
  message unacknowledged in Redis; after `visibility_timeout` a live worker puts it back on the queue
  and the step runs again there. A step that runs longer than that timeout is also handed out a second
  time while it still runs, hence a timeout well above the longest step.
- `task_retry_on_worker_lost` (Celery 5.7): when the process running the step dies (kill -9, the
  OOM killer) and the worker's main process survives, the main process sends the task again at once,
  at most `WORKER_LOST_RETRIES` times; then the run fails with WorkerLostError rather than a file that
  kills its worker every time looping for ever. (`task_reject_on_worker_lost` is the fallback when
  that resend fails.)

A Celery worker's pool makes each process that runs tasks a daemonic process, and Python refuses to
start processes from one ("daemonic processes are not allowed to have children"), while the
tokenize step starts its worker processes (COLLATE_WORKERS) for any file of more than one chunk. The
Celery settings below make every worker import this module (`include`), whose `worker_process_init`
handler lets its pool processes start them: they die with the pool process (core.tokens.tokenize,
PR_SET_PDEATHSIG), so nothing outlives a killed worker.

Every rerun writes the same bytes: outputs appear by an atomic rename, and the (hidden) temporary files
of the killed attempt are removed when the rerun writes the same target on the same machine
(core.fs.atomic_path); one left by a lost machine stays until that machine writes it again.
"""

from __future__ import annotations

import sys

import dagster as dg

from collate_assets.core.settings import DEFAULT_BROKER, EXECUTORS, LocationSettings  # noqa: F401 (re-exported)

EXECUTOR_ENV = "COLLATE_EXECUTOR"
DEFAULT_VISIBILITY_TIMEOUT = LocationSettings().celery_visibility_timeout
WORKER_LOST_RETRIES = 2
TASK_NAME = "execute_plan"  # dagster_celery.config.TASK_EXECUTE_PLAN_NAME: the task that runs one step


def executor_name() -> str:
    """COLLATE_EXECUTOR (LocationSettings.executor): ValueError naming the variable when it is not one of EXECUTORS."""
    return LocationSettings.from_env().executor


def celery_config() -> dict:
    """dagster-celery's `celery_executor` config (broker, backend, config_source) from the environment."""
    from dagster_celery.defaults import broker_transport_options

    location = LocationSettings.from_env()
    broker, backend = location.broker_backend()
    visibility = location.celery_visibility_timeout
    return {
        "broker": broker,
        "backend": backend,
        "config_source": {
            "task_acks_late": True,
            "task_retry_on_worker_lost": True,
            "task_reject_on_worker_lost": True,
            # The resend after a lost worker process: at once, and a bounded number of times.
            "task_annotations": {TASK_NAME: {"max_retries": WORKER_LOST_RETRIES, "default_retry_delay": 0}},
            "worker_prefetch_multiplier": 1,  # a worker holds only the task it runs
            "include": ["collate_assets.executors"],  # the workers import this module: see _allow_step_processes
            "broker_transport_options": {
                **broker_transport_options,  # dagster-celery's own (this dict replaces them)
                "visibility_timeout": visibility,
                # Look for messages of vanished workers every few seconds (kombu: every ~100 s).
                "unacked_restore_interval": max(1, min(10, visibility // 5)),
                "unacked_restore_throttle": 1,
            },
        },
    }


def _allow_step_processes(**_) -> None:
    """In each pool process of a Celery worker: let the steps start processes (see the module's doc)."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False  # billiard sets it; Process.start checks it


if "celery" in sys.modules:  # a Celery worker importing this module (`include`); nothing to do elsewhere
    from celery.signals import worker_process_init

    worker_process_init.connect(_allow_step_processes, weak=False)


def executor() -> dg.ExecutorDefinition:
    """The executor COLLATE_EXECUTOR names: `dg.in_process_executor` unless it says celery."""
    if executor_name() == "in_process":
        return dg.in_process_executor
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ImportError(
            f"{EXECUTOR_ENV}=celery needs dagster-celery and a Redis client: pip install 'collate_assets[celery]'"
        ) from exc
    return celery_executor.configured(celery_config(), name="celery")


def celery_yaml() -> str:
    """The `-y` file of `dagster-celery worker start`: the same Celery settings as the executor's."""
    import yaml

    return yaml.safe_dump({"execution": {"config": celery_config()}}, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["celery-yaml"]:
        print("usage: python -m collate_assets.executors celery-yaml > celery.yaml", file=sys.stderr)
        return 2
    sys.stdout.write(celery_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
