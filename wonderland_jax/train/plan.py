"""Ahead-of-time plans: the training step of a config compiled for a mesh with abstract inputs (nothing allocated),
its per-device memory and FLOPs, and the step time they imply on an accelerator at a given MFU.

    plan = plan_training(task, config, make_mesh("data=8,fsdp=8"))
    plan = plan_config(load_config("camera_dit_5b"), mesh, extrapolate=(2, 4))   # what `wonderland plan` runs
    table = plan.table(ACCELERATORS["h100"], mfu=0.4)      # a Markdown table; plan.to_dict(...) for JSON

`wonderland plan` runs this on fake CPU devices (`--xla_force_host_platform_device_count`) in a subprocess, so
a 256-device plan needs no accelerator. Figures are XLA's for the compiled SPMD program: `memory_analysis()`
(arguments, outputs, temporaries, aliased = donated) and `cost_analysis()` FLOPs, both per device. Compiled for
CPU, so the temporaries are those of the CPU backend's fusion and attention choices (the 'xla' attention
materialises the scores; a GPU / TPU build with cudnn / splash kernels needs less): read them as an upper bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

import jax
import ml_collections

from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.partitioning import activation_rules, batch_sharding, rules_from
from wonderland_jax.parallel.mesh import device_count
from wonderland_jax.parallel.targets import ACCELERATORS, Accelerator, Target, compiling_for, parse_target
from wonderland_jax.train.loop import setup
from wonderland_jax.train.tasks import DEPTH_KEYS, make_task, planning_config, task_name

logger = logging.getLogger("wonderland_jax")

GIB = 1024 ** 3
__all__ = ["ACCELERATORS", "Accelerator", "Plan", "plan_config", "plan_extrapolated", "plan_training"]


@dataclasses.dataclass(frozen=True)
class Plan:
  task: str
  mesh: dict
  global_batch: int
  num_trainable: int
  num_frozen: int
  argument_bytes: int  # per device: train state, frozen params, batch
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments
  temp_bytes: int
  flops: float  # per device per step
  method: str = "compiled"  # or "extrapolated from N and M blocks" (see plan_extrapolated)
  target: str = "cpu"  # what it was compiled for (`parallel.targets`)
  unit: str = "step"  # what one compiled call is (the inference jobs of `train.plan_jobs`: "run")

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def peak_bytes(self) -> int:
    """Arguments + temporaries + outputs not aliased to donated arguments."""
    return self.argument_bytes + self.temp_bytes + max(self.output_bytes - self.alias_bytes, 0)

  def step_seconds(self, accelerator: Accelerator, mfu: float) -> float:
    return self.flops / (accelerator.peak_flops * mfu)

  def fits(self, accelerator: Accelerator) -> bool:
    return self.peak_bytes <= accelerator.memory_bytes

  def to_dict(self, accelerator: Accelerator, mfu: float) -> dict:
    return dict(dataclasses.asdict(self), peak_bytes=self.peak_bytes, devices=self.devices,
                accelerator=accelerator.name, accelerator_memory_bytes=accelerator.memory_bytes, mfu=mfu,
                step_seconds=self.step_seconds(accelerator, mfu),
                fits=self.fits(accelerator))

  def table(self, accelerator: Accelerator, mfu: float) -> str:
    mesh = ",".join(f"{axis}={size}" for axis, size in self.mesh.items() if size > 1) or "1 device"
    rows = [("task", self.task), ("mesh", f"{mesh} ({self.devices} devices)"), ("method", self.method),
            ("compiled for", self.target), ("global batch", str(self.global_batch)),
            ("params", f"{self.num_trainable:,} trainable, {self.num_frozen:,} frozen"),
            ("per device: arguments", f"{self.argument_bytes / GIB:.2f} GiB"),
            ("per device: temporaries", f"{self.temp_bytes / GIB:.2f} GiB"),
            ("per device: outputs (not donated)", f"{max(self.output_bytes - self.alias_bytes, 0) / GIB:.2f} GiB"),
            ("per device: peak", f"{self.peak_bytes / GIB:.2f} GiB of {accelerator.memory_bytes / GIB:.0f} GiB "
                                 f"({accelerator.name})"),
            (f"FLOPs per {self.unit}", f"{self.flops:.3e} per device, {self.flops * self.devices:.3e} total"),
            (f"{self.unit} time at {mfu:.0%} MFU",
             f"{self.step_seconds(accelerator, mfu):.2f} s on {accelerator.name}")]
    if not self.flops:  # the CUDA plugin gives no cost analysis
      rows[-2:] = [(f"FLOPs per {self.unit}",
                    f"not given by the {self.target} compiler (plan --target cpu counts them)")]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


# CPU compiler options for plans: no LLVM optimisation of the generated code (never run).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def check_batch(global_batch: int, mesh, rules, flag: str = "--config.train.batch_size") -> None:
  """One `WonderlandError` naming `flag` when the batch does not split over the mesh's batch axes."""
  entry = batch_sharding(mesh, rules, 1).spec[0]
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  ways = math.prod(int(mesh.shape[axis]) for axis in axes)
  if global_batch % ways:
    raise WonderlandError(
        f"{flag}={global_batch} does not split over the mesh's batch axes {' x '.join(axes)} ({ways} devices): use "
        f"a multiple of {ways} (e.g. {ways * -(-global_batch // ways)}), or batch axes of "
        f"{math.gcd(global_batch, ways)} devices with the rest on fsdp / context / tensor")


def plan_training(task, config: ml_collections.ConfigDict, mesh, rules=None, *, fast_compile: bool = True,
                  target: Target | str = "cpu") -> Plan:
  """Lowers and compiles `task`'s training step for `mesh` with abstract inputs; see the module docstring.
  `target`: the platform the mesh's devices are (`parallel.targets`; compile-only TPU / GPU devices are compiled
  for with that backend's compiler, the attention and rasterizer choosing that platform's kernels)."""
  target = parse_target(target) if isinstance(target, str) else target
  if task.abstract_batch is None:
    raise WonderlandError(f"{task.name}: this task cannot be planned (no abstract batch)")
  if rules is None and config.get("parallel") is not None:
    rules = config.parallel.get("rules")
  rules = rules_from(rules)
  prepared = setup(task, config, abstract=True, mesh=mesh, rules=rules)
  state_shardings, frozen_shardings, rest_shardings = prepared.shardings
  batch = task.abstract_batch(config)
  global_batch = int(jax.tree.leaves(batch)[0].shape[0])
  check_batch(global_batch, mesh, rules)
  batch_shardings = jax.tree.map(lambda x: batch_sharding(mesh, rules, x.ndim), batch)
  step = jax.jit(prepared.step, in_shardings=(state_shardings, frozen_shardings, rest_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)
  logger.info("plan: compiling the %s step for %d devices (mesh %s)", task.name, device_count(mesh), dict(mesh.shape))
  with jax.set_mesh(mesh), activation_rules(rules), compiling_for(target.platform):
    lowered = step.lower(prepared.state, prepared.frozen, prepared.rest, batch)
    # Only XLA's buffer assignment and cost analysis are read: skip the CPU backend's costly code optimisation.
    compiled = lowered.compile(FAST_COMPILE if fast_compile and target.platform == "cpu" else None)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  cost = cost or {}  # the CUDA plugin gives none
  return Plan(task=task.name, mesh={axis: int(size) for axis, size in mesh.shape.items()},
              global_batch=global_batch, num_trainable=prepared.num_trainable, num_frozen=prepared.num_frozen,
              argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
              alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
              flops=float(cost.get("flops", 0.0)), target=target.name)


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def _set(config, dotted: str, value) -> None:
  *parents, last = dotted.split(".")
  for part in parents:
    config = config[part]
  with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
    config[last] = value


def plan_extrapolated(make_task, config: ml_collections.ConfigDict, mesh, depth_keys: tuple,
                      depths: tuple[int, int] = (2, 4), rules=None, *, target: Target | str = "cpu") -> Plan:
  """A plan for a deep model from two compiled shallow ones: the step is compiled with depths[0] and depths[1]
  blocks (the first of `depth_keys`; the others, e.g. the ControlNet copies, keep their ratio to it) and every
  per-device figure is extended linearly in the number of blocks to the config's. Exact for what is linear in
  depth (params, optimizer state, saved activations, FLOPs); the compile of a 42-block step on CPU takes
  tens of minutes, two shallow ones a few. Parameter counts are the full model's (abstract build)."""
  reference = depth_keys[0]
  full_depth = int(_get(config, reference))
  ratios = {key: float(_get(config, key)) / full_depth for key in depth_keys[1:]}
  low, high = depths
  if not 0 < low < high:
    raise WonderlandError(f"extrapolation depths {depths}: need 0 < low < high")
  plans = []
  for depth in depths:
    shallow = ml_collections.ConfigDict(config.to_dict())
    _set(shallow, reference, depth)
    for key, ratio in ratios.items():
      scaled = depth * ratio
      if abs(scaled - round(scaled)) > 1e-9 or round(scaled) < 1:
        raise WonderlandError(f"extrapolation depth {depth}: {key} would be {scaled:g}; choose depths where it is a "
                              f"whole number >= 1 (ratio {ratio:g} to {reference})")
      _set(shallow, key, int(round(scaled)))
    plans.append(plan_training(make_task(shallow), shallow, mesh, rules, target=target))
  full = setup(make_task(config), config, abstract=True)
  slope = (full_depth - low) / (high - low)
  grow = lambda field: getattr(plans[0], field) + (getattr(plans[1], field) - getattr(plans[0], field)) * slope
  return dataclasses.replace(
      plans[0], num_trainable=full.num_trainable, num_frozen=full.num_frozen,
      argument_bytes=int(grow("argument_bytes")), output_bytes=int(grow("output_bytes")),
      alias_bytes=int(grow("alias_bytes")), temp_bytes=int(grow("temp_bytes")), flops=float(grow("flops")),
      method=f"extrapolated to {full_depth} blocks from compiled {low} and {high}")


def plan_config(config: ml_collections.ConfigDict, mesh, *, model: str | None = None,
                extrapolate: tuple[int, int] | None = None, target: Target | str = "cpu") -> Plan:
  """The plan of the step `wonderland train <model>` runs for `config` (a loaded training config; `model`
  defaults to `tasks.task_name(config)`) on `mesh`, with its weight files replaced by random weights of the same
  shapes (`tasks.planning_config`): compiled whole, or with `extrapolate` = (N, M) block counts extended from two
  shallow compiles (`plan_extrapolated`)."""
  name = model or task_name(config)
  config = planning_config(name, config)
  if not extrapolate:
    return plan_training(make_task(name, config), config, mesh, target=target)
  if name not in DEPTH_KEYS:
    raise WonderlandError(f"--extrapolate: no depth keys known for {name}")
  return plan_extrapolated(lambda c: make_task(name, c), config, mesh, DEPTH_KEYS[name], tuple(extrapolate),
                           target=target)
