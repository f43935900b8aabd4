"""Multi-host start-up: one call before anything touches a device.

    from wonderland_jax.parallel import initialize
    initialize()                                    # SLURM / TPU pod: detected; one process: nothing to do
    initialize("10.0.0.1:1234", num_processes=4, process_id=int(os.environ["RANK"]))   # anything else

Wraps `jax.distributed.initialize`: explicit coordinator flags (or the environment variables
`WONDERLAND_COORDINATOR`, `WONDERLAND_NUM_PROCESSES`, `WONDERLAND_PROCESS_ID`) win; otherwise a SLURM job with
more than one task or a multi-worker Cloud TPU is detected and JAX's own detection fills in the rest; otherwise
the job is a single process. CPU processes talk over gloo. After it, logs of the "wonderland_jax" logger come
from process 0 only (warnings and errors from every process), metrics are written by process 0, and Orbax
checkpoints are written by all processes together.
"""

from __future__ import annotations

import logging
import os

import jax

from wonderland_jax.errors import WonderlandError

logger = logging.getLogger("wonderland_jax")

_ENV = ("WONDERLAND_COORDINATOR", "WONDERLAND_NUM_PROCESSES", "WONDERLAND_PROCESS_ID")


def _detected_cluster() -> str | None:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "SLURM"
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU"
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  return None


def initialize(coordinator: str | None = None, *, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts the multi-process runtime when the job has several processes; returns whether it did."""
  coordinator = coordinator or os.environ.get(_ENV[0])
  num_processes = num_processes if num_processes is not None else (
      int(os.environ[_ENV[1]]) if os.environ.get(_ENV[1]) else None)
  process_id = process_id if process_id is not None else (
      int(os.environ[_ENV[2]]) if os.environ.get(_ENV[2]) else None)
  if jax.distributed.is_initialized():
    return True
  if coordinator:
    if num_processes is None or process_id is None:
      raise WonderlandError(f"--coordinator {coordinator}: also give --num-processes and --process-id")
    if not 0 <= process_id < num_processes:
      raise WonderlandError(f"--process-id {process_id} must be in [0, --num-processes={num_processes})")
    how, kwargs = f"coordinator {coordinator}", dict(coordinator_address=coordinator, num_processes=num_processes,
                                                      process_id=process_id)
  else:
    cluster = _detected_cluster()
    if cluster is None:
      return False
    how, kwargs = cluster, {}
  if (os.environ.get("JAX_PLATFORMS") or "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  if jax.process_index() != 0:  # the other processes keep their warnings and errors
    logging.getLogger("wonderland_jax").setLevel(logging.WARNING)
  logger.info("distributed: process %d of %d (%s), %d local / %d global devices", jax.process_index(),
              jax.process_count(), how, jax.local_device_count(), jax.device_count())
  return True
