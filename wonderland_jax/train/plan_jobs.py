"""Ahead-of-time plans of the inference jobs at full size (`wonderland plan --job ...`), compiled deviceless for a
target with abstract params (nothing allocated), like `train.plan` does for training steps.

    plans = plan_jobs(("sample", "decode"), load_config("camera_dit_5b"), mesh, target=parse_target("h100"))
    scene = image_to_scene(plans, steps=50)        # the estimate of one image -> scene: their sum

Jobs (49 frames at 480x720 = 13 x 60 x 90 latents unless the sizes say otherwise):
  sample       one classifier-free-guided sampling step of the camera-guided transformer (`diffusion.sampling.
               _denoise_step`: the doubled batch [negative; positive] with the cameras' Plücker rays, + the DPM
               update), the transformer and camera branch from a camera-DiT training config (`base.random_config`,
               `camera`);
  encode       the VAE encoding the input image (tiled, as the pipeline does on accelerators);
  decode       the VAE decoding the 13 latent frames to 49 frames (tiled);
  reconstruct  the LaLRM (`--lalrm-config`, default configs/lalrm_highres.py) on the latents -> 4.2M Gaussians,
               plus rendering one 480x720 view of them with the tile rasterizer.
Params are abstract in the compute dtype (bfloat16 on accelerator targets: inference casts them), placed by
`nn.partitioning.DEFAULT_RULES` on the mesh: the guided batch over 'data', the tokens over 'context' (ring
attention when context > 1), heads over 'tensor', params replicated unless the mesh has 'fsdp'.

FLOPs: the model FLOPs of the job (XLA's cost analysis of the job lowered for one CPU device with the 'xla'
attention, so kernels that are custom calls on the target are counted, and the VAE's frame scan unrolled, so
every chunk is; the rasterizer's loops still count once), per device = total / devices for the jobs
that split over the mesh (`SPLIT`), the total for the VAE's (replicated); the time at an MFU is FLOPs per device
/ (peak x MFU). Memory: the target compiler's `memory_analysis()` per device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.diffusion.sampling import OFS, _denoise_step, encode_image
from wonderland_jax.diffusion.schedulers import SchedulerConfig, init_state, make_tables
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models import camera_dit, lalrm, vae
from wonderland_jax.models.camera_dit import CameraConfig
from wonderland_jax.models.dit import DiTConfig
from wonderland_jax.models.lalrm import LaLRMConfig
from wonderland_jax.models.vae import VAEConfig
from wonderland_jax.nn.partitioning import DEFAULT_RULES, activation_rules, param_sharding, replicated
from wonderland_jax.parallel.targets import Target, compiling_for
from wonderland_jax.splat.rasterize import rasterize
from wonderland_jax.train.plan import Plan

logger = logging.getLogger("wonderland_jax")

INFERENCE_JOBS = ("sample", "encode", "decode", "reconstruct")
# The jobs whose work divides over the mesh (the guided batch over data, tokens over context); the VAE's
# convolutions run whole on every device (replicated), so their time does not shrink with more devices.
SPLIT = ("sample", "reconstruct")
JOBS = ("train",) + INFERENCE_JOBS + ("image-to-scene",)


@dataclasses.dataclass(frozen=True)
class Sizes:
  frames: int = 49
  height: int = 480
  width: int = 720
  vae_tiling: bool = True  # as the pipeline on accelerators (`parallel.compute.Compute.tile_vae`)


@dataclasses.dataclass(frozen=True)
class JobPlan:
  """A `Plan` of one inference job plus the per-device bytes of its params (resident while a scene is made)."""
  plan: Plan
  param_bytes: int
  total_flops: float


def _abstract_params(module, dtype, mesh, rules):
  """The state of an abstract module as ShapeDtypeStructs, float params in `dtype`, placed on the mesh (None:
  unplaced)."""
  state = nnx.state(module)
  flat = []
  for path, variable in nnx.to_flat_state(state):
    value = variable.get_value()
    kind = jnp.dtype(dtype) if isinstance(variable, nnx.Param) and jnp.issubdtype(value.dtype, jnp.floating) \
        else value.dtype
    sharding = None if mesh is None else param_sharding(path, variable, tuple(value.shape), mesh, rules)
    flat.append((path, variable.replace(jax.ShapeDtypeStruct(value.shape, kind, sharding=sharding))))
  return nnx.from_flat_state(flat)


def _per_device_bytes(tree) -> int:
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _replicated(mesh, tree):
  """Every array (concrete or abstract) of `tree` as a ShapeDtypeStruct replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype") else
                                                     np.asarray(x).dtype, sharding=sharding), tree)


def _models(config: ml_collections.ConfigDict, lalrm_config: ml_collections.ConfigDict | None, *, dtype: str,
            attention: str, sequence_parallel: str) -> dict:
  """Abstract modules of the full-size models (nothing allocated), rebuilt with the inference compute settings."""
  compute = dict(dtype=dtype, attention=attention, sequence_parallel=sequence_parallel)
  base = DiTConfig.from_diffusers(config.base.random_config.to_dict(), **compute, remat="none").to_dict()
  camera = CameraConfig.from_dict({k: v for k, v in config.camera.to_dict().items() if v is not None}).to_dict()
  models = {"transformer": checkpoints.abstract_model(camera_dit.build, {"base": base, "camera": camera}),
            "vae": checkpoints.abstract_model(vae.build, VAEConfig.from_diffusers(
                config.vae.random_config.to_dict(), dtype=dtype).to_dict())}
  if lalrm_config is not None:
    fields = dict(lalrm_config.model.to_dict(), **compute, remat="none")
    models["lalrm"] = checkpoints.abstract_model(lalrm.build, LaLRMConfig(**fields).to_dict())
  return models


def _job(name: str, models: dict, sizes: Sizes, render_capacity: int):
  """(module, function, abstract args) of one job; the function takes the module's state first."""
  dit, autoencoder = models["transformer"], models["vae"]
  vae_config = autoencoder.config
  factor, temporal = vae_config.spatial_compression, int(vae_config.temporal_compression_ratio)
  latent_frames = (sizes.frames - 1) // temporal + 1
  h, w = sizes.height // factor, sizes.width // factor
  channels = vae_config.latent_channels
  latents = jax.ShapeDtypeStruct((1, latent_frames, h, w, channels), jnp.float32)
  if name == "sample":
    config = dit.config
    tables = make_tables(SchedulerConfig.from_diffusers(
        {"_class_name": "CogVideoXDPMScheduler", "prediction_type": "v_prediction", "timestep_spacing": "trailing",
         "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0}))
    state = jax.eval_shape(init_state, latents)
    graphdef = nnx.graphdef(dit)
    ofs = jnp.full((1,), OFS, jnp.float32) if config.ofs_embed_dim else None
    args = (tables, latents, state, jax.ShapeDtypeStruct((2,) + latents.shape[1:], jnp.float32),
            jax.ShapeDtypeStruct((2, config.max_text_seq_length, config.text_embed_dim), jnp.float32),
            jnp.int32(999), np.float32(6.0), latents, ofs,
            jax.ShapeDtypeStruct((2, sizes.frames, sizes.height, sizes.width, 6), jnp.float32))

    def function(params, *rest):
      return _denoise_step(graphdef, params, *rest, guided=True, num_inference_steps=50)
    return dit, function, args
  if name == "encode":
    graphdef = nnx.graphdef(autoencoder)
    image = jax.ShapeDtypeStruct((1, sizes.height, sizes.width, 3), jnp.float32)
    noise = jax.ShapeDtypeStruct((1, 1, h, w, channels), jnp.float32)
    return autoencoder, lambda params, x, n: encode_image(nnx.merge(graphdef, params), x, n,
                                                                           tiled=sizes.vae_tiling), (image,
                                                                                                           noise)
  if name == "decode":
    graphdef = nnx.graphdef(autoencoder)
    return autoencoder, lambda params, z: nnx.merge(graphdef, params).decode(z, tiled=sizes.vae_tiling), (latents,)
  if name == "reconstruct":
    if "lalrm" not in models:
      raise WonderlandError("--job reconstruct needs --lalrm-config (an LaLRM training config)")
    model = models["lalrm"]
    graphdef = nnx.graphdef(model)
    viewmats = jax.ShapeDtypeStruct((1, sizes.frames, 4, 4), jnp.float32)
    intrinsics = jax.ShapeDtypeStruct((1, sizes.frames, 3, 3), jnp.float32)

    def function(params, z, views, ks):
      gaussians = lalrm.predict(nnx.merge(graphdef, params), z, views, ks, sizes.height, sizes.width)[1]
      gaussians = jax.tree.map(lambda x: x[0], gaussians)
      camera = Camera(viewmat=views[0, 0], K=ks[0, 0], width=sizes.width, height=sizes.height)
      return rasterize(gaussians, camera, capacity=render_capacity).image
    return model, function, (latents, viewmats, intrinsics)
  raise WonderlandError(f"--job {name}: one of {', '.join(JOBS)}")


def _model_flops(name, config, lalrm_config, sizes, capacity, dtype) -> float:
  """The job's FLOPs from its lowering for one CPU device with the 'xla' attention (see the module docstring)."""
  models = _models(config, lalrm_config, dtype=dtype, attention="xla", sequence_parallel="none")
  module, function, args = _job(name, models, sizes, capacity)
  params = _abstract_params(module, dtype, None, DEFAULT_RULES)
  strip = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
  with compiling_for("cpu"), vae.unrolled_frame_scan():  # the VAE's frame chunks counted each
    cost = jax.jit(function).lower(strip(params), *strip(args)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def plan_job(name: str, config: ml_collections.ConfigDict, mesh, *, target: Target,
             lalrm_config: ml_collections.ConfigDict | None = None, dtype: str = "bfloat16",
             attention: str = "auto", sizes: Sizes = Sizes(), rules=DEFAULT_RULES) -> JobPlan:
  """Compiles inference job `name` (module docstring) for `mesh`'s devices (those of `target`)."""
  context = int(dict(mesh.shape).get("context", 1))
  lalrm_config = lalrm_config if name == "reconstruct" else None
  models = _models(config, lalrm_config, dtype=dtype, attention=attention,
                   sequence_parallel="ring" if context > 1 else "none")
  capacity = (int(lalrm_config.render.capacity) if lalrm_config is not None else 0) or 1 << 20
  module, function, args = _job(name, models, sizes, capacity)
  params = _abstract_params(module, dtype, mesh, rules)
  args = _replicated(mesh, args)
  logger.info("plan: compiling the %s job for %d devices (mesh %s, %s)", name, mesh.size, dict(mesh.shape),
              target.name)
  with jax.set_mesh(mesh), activation_rules(rules), compiling_for(target.platform):
    compiled = jax.jit(function).lower(params, *args).compile()
  memory = compiled.memory_analysis()
  total_flops = _model_flops(name, config, lalrm_config, sizes, capacity, dtype)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  batch = 2 if name == "sample" else 1
  plan = Plan(task=f"{name} ({sizes.frames}x{sizes.height}x{sizes.width})",
              mesh={axis: int(size) for axis, size in mesh.shape.items()}, global_batch=batch, num_trainable=0,
              num_frozen=int(num_params), argument_bytes=int(memory.argument_size_in_bytes),
              output_bytes=int(memory.output_size_in_bytes), alias_bytes=int(memory.alias_size_in_bytes),
              temp_bytes=int(memory.temp_size_in_bytes), flops=total_flops / (mesh.size if name in SPLIT else 1),
              method=f"compiled whole ({dtype}, attention {attention})", target=target.name, unit="run")
  return JobPlan(plan, _per_device_bytes(params), total_flops)


def image_to_scene(jobs: dict[str, JobPlan], steps: int = 50) -> Plan:
  """One image -> scene from the compiled jobs: encode + `steps` sampling steps + reconstruct (+ decode when
  planned), run one after the other with every model resident: peak = all jobs' params + the largest job's peak
  beyond its params."""
  missing = [name for name in ("encode", "sample", "reconstruct") if name not in jobs]
  if missing:
    raise WonderlandError(f"image-to-scene needs the {', '.join(missing)} job(s)")
  counts = {name: steps if name == "sample" else 1 for name in jobs}
  first = jobs["sample"].plan
  resident = sum(job.param_bytes for name, job in jobs.items() if name != "decode")  # decode shares encode's VAE
  working = max(job.plan.peak_bytes - job.param_bytes for job in jobs.values())
  flops = sum(job.plan.flops * counts[name] for name, job in jobs.items())
  return dataclasses.replace(
      first, task=f"image-to-scene ({' + '.join(f'{counts[n]} x {n}' if counts[n] > 1 else n for n in jobs)})",
      num_frozen=sum(job.plan.num_frozen for name, job in jobs.items() if name != "decode"),
      argument_bytes=resident, temp_bytes=working, output_bytes=0, alias_bytes=0, flops=flops,
      method="sum of the compiled jobs")


def plan_jobs(names: Sequence[str], config, mesh, *, target: Target, lalrm_config=None, dtype: str = "bfloat16",
              attention: str = "auto", sizes: Sizes = Sizes()) -> dict[str, JobPlan]:
  return {name: plan_job(name, config, mesh, target=target, lalrm_config=lalrm_config, dtype=dtype,
                         attention=attention, sizes=sizes) for name in names}
