"""The labeling job's Ray plumbing: joining or starting a cluster and starting the actors.

``ConversationWorker`` is a plain class of the library; it is wrapped with ``ray.remote`` here,
at the call site, with one GPU per actor when the cluster has GPUs and ``cpus_per_actor`` CPUs
otherwise.

Several conversations per actor (``slots_per_actor`` P > 1): the driver keeps submitting one
``label`` call per conversation, as with one slot, and the actor is a threaded actor
(``max_concurrency``) whose calls hand their conversations to one batched loop in the worker
(``dpm_worker.worker.slot_loop``). Chosen over a call carrying several conversations or an actor that
pulls work from the driver because every result still names its conversation and arrives when
that conversation ends (a long one holds nobody back), the scheduler's bookkeeping (retries,
requeue on actor death, timeouts, progress) stays as it is, and a call waiting for a slot reads
its audio meanwhile (the prefetch of the slots that open next). The loop itself is library code,
tested without Ray.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from dpm_worker.errors import DpmError, StorageError
from dpm_worker.storage import redact
from dpm_worker.tables import RunInfo
from dpm_worker.worker import WorkerSettings
from pipelines.label.config import LabelJobConfig
from pipelines.label.metrics import ActorRecorder

log = logging.getLogger("dpm.label")
# Environment forwarded to actors: where storage is, never credentials (actors get those from
# their node's environment or instance role, so they never pass through Ray's metadata).
FORWARDED_ENV = (
    "DPM_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DPM_CACHE_DIR",
)


def connect(address: str | None) -> None:
    """Join the cluster at ``address``, or start an embedded local Ray (labeling and training)."""
    import ray

    if ray.is_initialized():
        return
    # Under `ray job submit` the driver runs on the cluster with RAY_ADDRESS set: join it.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            # Only small summaries travel through the object store.
            object_store_memory=256 * 1024 * 1024,
            logging_level=logging.WARNING,
        )


def start_actors(config: LabelJobConfig, run: RunInfo, worker_class: type) -> list[Any]:
    """Create the actors (wrapped here, at the call site) and wait until they loaded the model."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    connect(config.address)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0))
    options: dict[str, Any] = {
        "num_cpus": config.cpus_per_actor,
        "max_restarts": config.max_restarts,
        "max_task_retries": 0,  # the scheduler retries, knowing which conversation died
        "runtime_env": {
            "env_vars": {
                # One progress line from the driver beats a weight-loading bar per actor.
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
            }
        },
    }
    if config.slots_per_actor > 1:
        # A threaded actor: its conversations arrive as concurrent calls that one loop batches
        # (dpm_worker.worker.slot_loop); one more thread keeps the readiness probe answerable.
        options["max_concurrency"] = config.calls_per_actor + 1
    if gpus >= config.gpus_per_actor:
        options["num_gpus"] = config.gpus_per_actor
        n = config.actors or max(1, int(gpus // config.gpus_per_actor))
    else:
        n = config.actors or max(1, int(cpus // config.cpus_per_actor))
    # The library's measurements become Ray metrics in the actor (pipelines.label.metrics).
    extra = {"record": ActorRecorder(run.run_id, run.model_id)} if config.metrics else {}
    settings = WorkerSettings(
        output_uri=config.output,
        run=run,
        model_uri=config.model,
        labeling=config.labeling,
        device=config.device,
        dtype=config.dtype,
        torch_threads=config.threads,
        max_segment_s=config.max_segment_s,
        segments=config.segments,
        checkpoint_every=config.checkpoint_every_utterances,
        verify_weights=config.verify_weights,
        slots=config.slots_per_actor,
    )
    log.info(
        "starting %d actor(s) with %s (cluster: %.0f CPU, %.0f GPU)",
        n,
        {k: v for k, v in options.items() if k.startswith("num_")},
        cpus,
        gpus,
    )
    remote_class: Any = ray.remote(worker_class).options(**options)
    handles = [remote_class.remote(settings, **extra) for _ in range(n)]
    start = time.monotonic()
    try:
        infos = ray.get(
            [h.describe.remote() for h in handles], timeout=config.actor_start_timeout_s
        )
    except GetTimeoutError as exc:
        raise StorageError(
            f"{n} actor(s) did not start within {config.actor_start_timeout_s:.0f} s; the "
            f"cluster has {resources}; each actor needs {options.get('num_gpus', 0)} GPU and "
            f"{config.cpus_per_actor} CPU"
        ) from exc
    except RayActorError as exc:
        raise DpmError(f"an actor failed to start: {redact(str(exc))[-1500:]}") from exc
    log.info(
        "actors ready in %.1f s: model %s on %s",
        time.monotonic() - start,
        infos[0]["model_id"],
        sorted({i["device"] for i in infos}),
    )
    return handles
