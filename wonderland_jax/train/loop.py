"""The training loop every model shares: a functional jitted step, Orbax checkpoints, resume, preemption.

    result = train(task, config, workdir)

A `Task` says what is trained: how to build the model, which params are trainable (an nnx filter; the rest
are frozen and carry no gradients or optimizer state), the loss, the data iterator and an optional
evaluation. The loop:

  * splits the model once (`graphdef, trainable, frozen, rest = nnx.split(model, filter, nnx.Param, ...)`)
    and jits a pure step that `nnx.merge`s inside: value_and_grad of the loss w.r.t. the trainable params
    only, gradient accumulation over `train.grad_accum` micro-batches (lax.scan), optax update, the train
    state donated;
  * skips an update whose loss, gradient norm or updated params are not finite (the step is reported; with
    `train.nonfinite="stop"` the run stops with an error instead); a skipped update never reaches a
    checkpoint, since the params are left as they were. More than `train.max_skipped_in_a_row` skips in a row,
    or more than `train.max_skipped_fraction` of the run's steps, stop the run with an error and a summary
    (the model is not exported);
  * saves an Orbax checkpoint every `train.checkpoint_every` steps (async, keep `train.keep_checkpoints`)
    holding the train state (params, optimizer state, step, PRNG key), the data iterator's state and the
    config; a job started on a workdir with checkpoints resumes from the latest one, and - the step being a
    pure function of (state, batch), the batch order restored and the key folded with the step - continues
    exactly as an uninterrupted run would;
  * on SIGTERM (preemption) or Orbax's multi-host preemption notice, saves at the end of the current step and
    returns with `status="preempted"`; on Ctrl-C (SIGINT) the same with `status="interrupted"` (a second
    Ctrl-C stops at once);
  * resumes from the newest checkpoint that can be read: an unreadable one (a truncated or damaged file) is
    reported in one line and moved to `<workdir>/unreadable_checkpoints/STEP` once an older one restores;
  * holds `<workdir>/wonderland.lock` while it runs (`train.workdir`), so a second run on the same workdir is
    refused; a checkpoint that fails to save (disk full) stops the run with one error at once;
  * logs averaged scalars (loss, grad norm, learning rate, steps/s) to TensorBoard and `metrics.jsonl`
    (`MetricWriter`), runs `task.evaluate` every `train.eval_every` steps, and shows steps/s and ETA;
  * at the end, `task.export(model, workdir / "model")` writes the trained model (a `checkpoints.load`-able
    directory).

With `parallel.mesh` set (e.g. 'fsdp=-1' or 'data=2,fsdp=4,context=2'), the state, the frozen params and the
batches are sharded on that mesh by the params' logical axis names and `parallel.rules` (`wonderland_jax.parallel`),
and the step is compiled for it; each process feeds its share of the batch. Checkpoints restore onto whatever
mesh the resumed run has.

Config keys used here: seed, train.{steps, batch_size, grad_accum, log_every, checkpoint_every,
keep_checkpoints, eval_every, nonfinite, max_skipped_in_a_row, max_skipped_fraction, async_checkpoints},
optimizer.* (see `optim.py`), parallel.{mesh, dcn, rules} (optional).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from wonderland_jax.errors import OutputError, WonderlandError
from wonderland_jax.io_utils import write_json
from wonderland_jax.nn import partitioning
from wonderland_jax.nn.abstract import abstract_build
from wonderland_jax.outputs import storage_reason, write_errors
from wonderland_jax.parallel.mesh import make_mesh
from wonderland_jax.progress import StepProgress
from wonderland_jax.train.metrics import MetricWriter, ScalarAverager
from wonderland_jax.train.optim import learning_rate_schedule, make_optimizer
from wonderland_jax.train.workdir import WorkdirLock, check_workdir

logger = logging.getLogger("wonderland_jax")

NONFINITE_POLICIES = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class Task:
  """What to train. `loss_fn(model, batch, key) -> (loss, {name: scalar})` must be a pure, jittable function
  of the merged model; `make_iterator(config)` returns an iterator of numpy batch dicts with `get_state()` /
  `set_state(state)` (JSON-serialisable state; grain's DatasetIterator has both)."""

  name: str
  build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
  loss_fn: Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]
  make_iterator: Callable[[ml_collections.ConfigDict], Iterator]
  trainable: Any = nnx.Param
  evaluate: Callable[[nnx.Module, ml_collections.ConfigDict], tuple[dict, dict]] | None = None
  export: Callable[[nnx.Module, ml_collections.ConfigDict, Path], None] | None = None
  # For ahead-of-time plans (`train.plan`): the global batch as jax.ShapeDtypeStructs.
  abstract_batch: Callable[[ml_collections.ConfigDict], dict] | None = None


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: completed steps
  params: dict  # the trainable params as a pure dict
  opt_state: Any
  key: jax.Array  # uint32 raw key data (checkpointable as a plain array)


@dataclasses.dataclass
class TrainResult:
  step: int
  status: str  # "finished" | "preempted"
  model: nnx.Module
  skipped_steps: int
  last_metrics: dict


def _host_scalar(value) -> float:
  """A replicated scalar as a float (on several processes a global array is read from a local copy)."""
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    value = value.addressable_data(0)
  return float(jax.device_get(value))


def _batch_size(batch: dict) -> int:
  return int(jax.tree.leaves(batch)[0].shape[0])


def make_train_step(graphdef, loss_fn, tx: optax.GradientTransformation, grad_accum: int):
  """The pure step (state, frozen, rest, batch) -> (state, metrics); metrics include loss, grad_norm and
  `finite` (1.0 when the update was applied)."""

  def micro_grads(params, frozen, rest, batch, key):
    def objective(params):
      model = nnx.merge(graphdef, params, frozen, rest)
      loss, aux = loss_fn(model, batch, key)
      return loss, aux
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, dict(aux, loss=loss)

  def step(state: TrainState, frozen, rest, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    if grad_accum == 1:
      grads, metrics = micro_grads(state.params, frozen, rest, batch, key)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

      def body(carry, inputs):
        index, micro_batch = inputs
        grads, metrics = micro_grads(state.params, frozen, rest, micro_batch, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, (grads, metrics)), None

      zeros = jax.eval_shape(micro_grads, state.params, frozen, rest, jax.tree.map(lambda x: x[0], micro), key)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
      grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Non-finite params after the update (a NaN or overflowing learning rate) count too.
    finite = finite & jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), params))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state), key=state.key)
    return new_state, dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))

  return step


class _Preemption:
  """Sets `requested` on SIGTERM ("preempted") or a first SIGINT ("interrupted") until closed (main thread only);
  the loop saves and stops at the step's end. A second SIGINT raises KeyboardInterrupt at once."""

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handler)

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.requested == "interrupted":
        raise KeyboardInterrupt
      logger.warning("interrupted: saving a checkpoint after this step and stopping (Ctrl-C again to stop now)")
      self.requested = "interrupted"
      return
    logger.warning("SIGTERM received: saving a checkpoint after this step and stopping")
    self.requested = "preempted"

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def _checkpoint_manager(directory: Path, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.train.keep_checkpoints), create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=bool(config.train.get("async_checkpoints", True)))
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _save(manager, step: int, state: TrainState, iterator, config, *, force: bool = False) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              data=ocp.args.JsonSave(iterator.get_state()),
                                              config=ocp.args.JsonSave(config.to_dict())), force=force)


def _restore(manager, step: int, state: TrainState, iterator) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           data=ocp.args.JsonRestore()))
  iterator.set_state(restored.data)
  return restored.state


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _restore_newest_readable(manager, state: TrainState, iterator, workdir: Path, name: str) -> TrainState | None:
  """Restores the newest checkpoint that can be read (None when there are none). Newer unreadable ones are moved
  to `<workdir>/unreadable_checkpoints/STEP` once an older one has restored (proving the config matches), so
  the next saves do not collide with them. None readable: one `WonderlandError` naming each step's failure."""
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = _restore(manager, step, state, iterator)
    except Exception as error:  # noqa: BLE001 (Orbax raises bare Exception for damaged files)
      failures.append((step, _first_line(error)))
      logger.warning("%s: the checkpoint at step %d cannot be read (%s)", name, step, failures[-1][1])
      continue
    if failures:
      aside = workdir / "unreadable_checkpoints"
      aside.mkdir(exist_ok=True)
      for bad, _ in failures:
        target = aside / str(bad)
        if target.exists():
          target = aside / f"{bad}-{os.getpid()}"
        os.replace(Path(manager.directory) / str(bad), target)
        logger.warning("%s: moved the unreadable checkpoint %d to %s", name, bad, target)
      manager.reload()
    logger.info("%s: resuming from the checkpoint at step %d in %s", name, step, workdir)
    return restored
  if not steps:
    return None
  details = "; ".join(f"step {step}: {reason}" for step, reason in failures)
  raise WonderlandError(f"{workdir}/checkpoints: no checkpoint can be restored ({details}). If the config changed, "
                        "rerun with the config of this workdir (its config.json); if the files are damaged, move "
                        "checkpoints/ aside to start over")


def _save_failed(manager, workdir: Path, error: BaseException) -> WonderlandError:
  """One `OutputError` for a checkpoint that could not be written. Saves still in flight (an earlier, good step)
  are finished first, then Orbax's partial temporaries are removed."""
  try:
    manager.wait_until_finished()
  except Exception:  # noqa: BLE001, S110 (the error being reported is `error`; a second one adds nothing)
    pass
  for partial in Path(manager.directory).glob("*.orbax-checkpoint-tmp*"):
    shutil.rmtree(partial, ignore_errors=True)
  return OutputError(f"--workdir {workdir}: saving a checkpoint failed: {storage_reason(error)}; the last complete "
                     "checkpoint is kept, rerun to resume from it")


def check_config(config) -> None:
  """One `WonderlandError` naming the flag for a `train.*` / `optimizer.learning_rate` value no run can use."""
  train = config.train

  def integer(name: str, minimum: int) -> int:
    value = train.get(name, minimum)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise WonderlandError(f"--config.train.{name}={value!r}: must be an integer >= {minimum}")
    return int(value)

  for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
               "max_skipped_in_a_row"):
    integer(name, 1)
  integer("eval_every", 0)
  if train.nonfinite not in NONFINITE_POLICIES:
    raise WonderlandError(f"--config.train.nonfinite={train.nonfinite!r}: use one of {NONFINITE_POLICIES}")
  if int(train.batch_size) % int(train.grad_accum):
    raise WonderlandError(f"--config.train.batch_size={train.batch_size} is not divisible by "
                          f"--config.train.grad_accum={train.grad_accum}")
  fraction = train.get("max_skipped_fraction", 0.1)
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
    raise WonderlandError(f"--config.train.max_skipped_fraction={fraction!r}: must be in [0, 1]")
  rate = (config.get("optimizer") or {}).get("learning_rate")
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
    raise WonderlandError(f"--config.optimizer.learning_rate={rate!r}: must be a finite number > 0")


@dataclasses.dataclass
class StepSetup:
  """A task's model split for the step, the optimizer, the initial train state and the step function
  (`setup`). With `abstract=True` every array is a `jax.ShapeDtypeStruct` (nothing allocated: for planning)."""

  graphdef: Any
  state: TrainState
  frozen: dict  # the frozen params as a pure dict
  rest: Any  # the other variables (nnx.State)
  tx: optax.GradientTransformation
  step: Callable  # the pure step (state, frozen, rest, batch) -> (state, metrics), not jitted
  num_trainable: int
  num_frozen: int
  # With a mesh: NamedShardings of (state, frozen, rest) from the params' logical axis names and the rules.
  shardings: tuple | None = None


def setup(task: Task, config: ml_collections.ConfigDict, *, abstract: bool = False, mesh=None,
          rules=None) -> StepSetup:
  """Builds the task's model (abstractly with `abstract`) and everything the step needs; see `StepSetup`.
  With a `mesh`, `shardings` places the train state (optimizer moments like their params), the frozen params
  and the other variables by `rules` (default `nn.partitioning.DEFAULT_RULES`)."""
  build = lambda: task.build_model(config, nnx.Rngs(int(config.seed)))
  if abstract:
    model = abstract_build(build)
  elif mesh is not None:  # params born sharded, checkpoints restored onto the mesh
    with partitioning.building_on(mesh, partitioning.DEFAULT_RULES if rules is None else rules):
      model = build()
  else:
    model = build()
  graphdef, trainable_state, frozen_state, rest = nnx.split(model, task.trainable, nnx.Param, ...)
  params = nnx.to_pure_dict(trainable_state)
  if not jax.tree.leaves(params):
    raise WonderlandError(f"{task.name}: the trainable-parameter filter selects no parameters")
  frozen = nnx.to_pure_dict(frozen_state)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  total_steps = int(config.train.steps)
  tx = make_optimizer(config.optimizer, total_steps)
  key = jax.random.key_data(jax.random.key(int(config.seed)))
  if abstract:
    opt_state = jax.eval_shape(tx.init, params)
    key = jax.ShapeDtypeStruct(key.shape, key.dtype)
    step = jax.ShapeDtypeStruct((), jnp.int32)
  else:
    opt_state, step = tx.init(params), jnp.zeros((), jnp.int32)
  state = TrainState(step=step, params=params, opt_state=opt_state, key=key)
  shardings = None
  if mesh is not None:
    rules = partitioning.DEFAULT_RULES if rules is None else rules
    param_shardings = partitioning.state_shardings(trainable_state, mesh, rules)
    replicated = partitioning.replicated(mesh)
    opt_shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, opt_state, param_shardings,
                                          transform_non_params=lambda _: replicated)
    shardings = (TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, key=replicated),
                 partitioning.state_shardings(frozen_state, mesh, rules), jax.tree.map(lambda _: replicated, rest))
  return StepSetup(graphdef=graphdef, state=state, frozen=frozen, rest=rest, tx=tx,
                   step=make_train_step(graphdef, task.loss_fn, tx, int(config.train.grad_accum)),
                   num_trainable=count(params), num_frozen=count(frozen), shardings=shardings)


def training_mesh(config: ml_collections.ConfigDict):
  """(mesh, rules) from `config.parallel` (mesh: axis sizes like 'fsdp=-1'; dcn: across slices / nodes; rules:
  logical rules, default `nn.partitioning.DEFAULT_RULES`), or (None, None) to train on the default device."""
  parallel = config.get("parallel")
  if not parallel or not parallel.get("mesh"):
    return None, None
  mesh = make_mesh(parallel.mesh, dcn=parallel.get("dcn") or None)
  return mesh, partitioning.rules_from(parallel.get("rules"))


def _batch_axes(mesh, rules) -> tuple:
  entry = partitioning.batch_sharding(mesh, rules, 1).spec[0]
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _jit_step(prepared: StepSetup, mesh, rules):
  """The jitted step; with a mesh: sharded in and out as `prepared.shardings`, the per-process batches assembled
  into global arrays split over the batch axes, traced and run with the mesh set (sequence parallelism reads
  it)."""
  if mesh is None:
    return jax.jit(prepared.step, donate_argnums=0)
  state_shardings, frozen_shardings, rest_shardings = prepared.shardings
  jitted = jax.jit(prepared.step, in_shardings=(state_shardings, frozen_shardings, rest_shardings, None),
                   out_shardings=(state_shardings, partitioning.replicated(mesh)), donate_argnums=0)

  def run(state, frozen, rest, batch):
    batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        partitioning.batch_sharding(mesh, rules, np.ndim(x)), np.asarray(x)), batch)
    with jax.set_mesh(mesh), partitioning.activation_rules(rules):
      return jitted(state, frozen, rest, batch)

  return run


def train(task: Task, config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          force: bool = False) -> TrainResult:
  """Trains (or resumes) `task` in `workdir`, holding its lock (`force` takes over a live one); see the module
  docstring."""
  check_config(config)
  workdir = check_workdir(workdir)
  with write_errors(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
  lock = WorkdirLock(workdir, force=force) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train(task, config, workdir)


def _train(task: Task, config: ml_collections.ConfigDict, workdir: Path) -> TrainResult:
  total_steps = int(config.train.steps)
  mesh, rules = training_mesh(config)
  prepared = setup(task, config, mesh=mesh, rules=rules)
  graphdef, state, frozen, rest = prepared.graphdef, prepared.state, prepared.frozen, prepared.rest
  logger.info("%s: %s trainable params, %s frozen", task.name, f"{prepared.num_trainable:,}",
              f"{prepared.num_frozen:,}")
  if mesh is not None:
    batch_devices = int(np.prod([mesh.shape[axis] for axis in _batch_axes(mesh, rules)]))
    if int(config.train.batch_size) % batch_devices:
      raise WonderlandError(f"--config.train.batch_size={config.train.batch_size} does not split over the "
                            f"{batch_devices} devices of the batch axes of --config.parallel.mesh="
                            f"{config.parallel.mesh} ({dict(mesh.shape)})")
    state, frozen, rest = jax.device_put((state, frozen, rest), prepared.shardings)
    logger.info("%s: training on the mesh %s (%d processes)", task.name, dict(mesh.shape), jax.process_count())
  iterator = task.make_iterator(config)

  manager = _checkpoint_manager(workdir / "checkpoints", config)
  restored = _restore_newest_readable(manager, state, iterator, workdir, task.name)
  if restored is not None:
    state = restored
  elif jax.process_index() == 0:
    write_json(workdir / "config.json", config.to_dict())
  step_fn = _jit_step(prepared, mesh, rules)
  schedule = learning_rate_schedule(config.optimizer, total_steps)

  writer = MetricWriter(workdir)
  averager = ScalarAverager()
  preemption = _Preemption()
  step = int(state.step)
  bar = StepProgress(total=total_steps, initial=step, desc=f"train {task.name}", log_every=int(config.train.log_every))
  first_step, completed = step, False
  skipped, in_a_row, last_metrics, status = 0, 0, {}, "finished"
  max_in_a_row = int(config.train.get("max_skipped_in_a_row", 10))
  max_skipped = float(config.train.get("max_skipped_fraction", 0.1)) * (total_steps - step)
  per_process_batch = int(config.train.batch_size) // jax.process_count()
  eval_every = int(config.train.get("eval_every", 0))
  try:
    while step < total_steps:
      batch = next(iterator)
      if _batch_size(batch) != per_process_batch:
        raise WonderlandError(f"{task.name}: the data iterator gave a batch of {_batch_size(batch)}; "
                              f"--config.train.batch_size={config.train.batch_size} over {jax.process_count()} "
                              f"process(es) means {per_process_batch} per process")
      state, metrics = step_fn(state, frozen, rest, batch)
      step += 1
      metrics = {name: _host_scalar(value) for name, value in metrics.items()}
      if metrics.pop("finite") < 1:
        skipped += 1
        in_a_row += 1
        message = (f"{task.name}: step {step}: non-finite loss ({metrics['loss']}), gradient norm "
                   f"({metrics['grad_norm']}) or updated params")
        if config.train.nonfinite == "stop":
          raise WonderlandError(message + "; stopping (the params were not updated; set "
                                "--config.train.nonfinite=skip to skip such steps)")
        logger.warning("%s; update skipped (%d so far)", message, skipped)
        if in_a_row >= max_in_a_row or skipped > max_skipped:
          raise WonderlandError(
              f"{task.name}: stopped at step {step}: {skipped} of {step - first_step} updates skipped ({in_a_row} in "
              f"a row) for non-finite values (last loss {metrics['loss']:.4g}, gradient norm "
              f"{metrics['grad_norm']:.4g}); the params are those of the last good step. Lower "
              f"--config.optimizer.learning_rate={config.optimizer.learning_rate} or check the data; the limits are "
              "--config.train.max_skipped_in_a_row / max_skipped_fraction")
      else:
        in_a_row = 0
        averager.add(metrics)
      bar.update(step, loss=metrics["loss"])
      if step % int(config.train.log_every) == 0 or step == total_steps:
        last_metrics = dict(averager.compute(), learning_rate=float(schedule(step - 1)),
                            steps_per_second=bar.steps_per_second(step), skipped_steps=skipped)
        writer.scalars(step, last_metrics)
      if task.evaluate is not None and eval_every and (step % eval_every == 0 or step == total_steps):
        scalars, images = task.evaluate(nnx.merge(graphdef, state.params, frozen, rest), config)
        writer.scalars(step, {f"eval/{name}": value for name, value in scalars.items()})
        writer.images(step, {f"eval/{name}": image for name, image in images.items()})
        logger.info("%s: step %d eval %s", task.name, step,
                    " ".join(f"{name} {value:.4g}" for name, value in scalars.items()))
      preempted = preemption.requested or ("preempted" if manager.reached_preemption(step) else None)
      if step % int(config.train.checkpoint_every) == 0 or step == total_steps or preempted:
        try:
          manager.check_for_errors()  # the previous async save
          _save(manager, step, state, iterator, config, force=bool(preempted) or step == total_steps)
          if preempted or step == total_steps:
            manager.wait_until_finished()
            manager.check_for_errors()
        except WonderlandError:
          raise
        except Exception as error:  # noqa: BLE001 (Orbax's async errors come as several types)
          raise _save_failed(manager, workdir, error) from error
      if preempted and step < total_steps:
        status = preempted
        logger.warning("%s: stopped at step %d (%s); rerun the same command to resume", task.name, step, preempted)
        break
    completed = True
  finally:
    save_error = None
    try:
      manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 (a failed background save; reported below unless already failing)
      save_error = error
    manager.close()
    preemption.close()
    bar.close()
    writer.close()
  if save_error is not None and completed:
    raise _save_failed(manager, workdir, save_error) from save_error
  if skipped:
    logger.warning("%s: %d of %d updates were skipped for non-finite values", task.name, skipped, step - first_step)
  model = nnx.merge(graphdef, state.params, frozen, rest)
  if status == "finished" and task.export is not None:
    task.export(model, config, workdir / "model")
  return TrainResult(step=step, status=status, model=model, skipped_steps=skipped, last_metrics=last_metrics)

