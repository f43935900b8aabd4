"""How inference runs: compute dtype, attention kernel and device mesh (`sample`, `generate-video`, `generate`,
`eval`, and the pipelines' `load(..., compute=)`).

    compute = Compute.create(dtype="auto", attention="auto", mesh="context=2,data=2")
    pipe = CameraVideoPipeline.load("checkpoints/cogvideox-5b-i2v", "runs/camera_dit/model", compute=compute)
    latents, frames = pipe.generate(image, prompt, cameras, key=key)     # sampled on the 4 devices

dtype 'auto' is bfloat16 on accelerators and float32 on CPU; the models' matmuls run in it and their float params
are cast to it once loaded (inference keeps no float32 master copy; norms and softmax stay float32 inside the
models). attention 'auto' picks the kernel for the platform compiled for (`nn.attention.resolve`: cuDNN flash
attention on NVIDIA in 16-bit, splash on TPU, the chunked online-softmax elsewhere).

The mesh (`parallel.mesh` axis names) places one scene's work over several devices:
  data     the guided batch (classifier-free guidance's unconditional and conditional halves: xDiT's CFG
           parallelism) and any batch of scenes;
  context  the video tokens, with ring attention (`nn.sequence_parallel`) in the transformer and the LaLRM;
  tensor   attention heads and MLP columns; fsdp  the params' embed dim (a model too big for one device).
Models are loaded straight onto the mesh (`checkpoints.load` under `building_on`) and every jitted stage runs
under it (`running()`), so the layout follows `nn.partitioning.DEFAULT_RULES`; results equal one device's up
to float rounding (the ring sums the softmax in another order). VAE tiling (`vae_tiling`, default: on for
accelerators) decodes 49x480x720 in overlapping spatial tiles, as diffusers' `enable_tiling`, so that it fits
the chip that samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.attention import IMPLEMENTATIONS
from wonderland_jax.nn.partitioning import DEFAULT_RULES, activation_rules, building_on
from wonderland_jax.parallel.mesh import make_mesh, parse_axes

DTYPES = ("auto", "float32", "bfloat16", "float16")
TILE_FROM = 256  # pixels a side from which the VAE tiles on accelerators (480x720: 240x360 tiles)


def accelerator_backend() -> bool:
  return jax.default_backend() != "cpu"


@dataclasses.dataclass(frozen=True)
class Compute:
  """See the module docstring. Build with `Compute.create` (checks the flags and makes the mesh)."""

  dtype: str = "float32"  # resolved: float32 | bfloat16 | float16
  attention: str = "auto"
  mesh: jax.sharding.Mesh | None = None
  vae_tiling: bool | None = False  # None: `tile_vae` decides by the frame size
  rules: tuple = DEFAULT_RULES

  @classmethod
  def create(cls, dtype: str = "auto", attention: str = "auto", mesh: str = "",
             vae_tiling: bool | None = None) -> Compute:
    """From the CLI flags `--dtype`, `--attention`, `--mesh` (axis sizes, e.g. 'context=4,data=2'; '' = one
    device); bad values are one `WonderlandError` naming the flag."""
    if dtype not in DTYPES:
      raise WonderlandError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if attention not in IMPLEMENTATIONS:
      raise WonderlandError(f"--attention {attention}: use one of {', '.join(IMPLEMENTATIONS)}")
    if dtype == "auto":
      dtype = "bfloat16" if accelerator_backend() else "float32"
    return cls(dtype=dtype, attention=attention, mesh=inference_mesh(mesh) if mesh else None,
               vae_tiling=(None if accelerator_backend() else False) if vae_tiling is None else bool(vae_tiling))

  def tile_vae(self, height: int, width: int) -> bool:
    """Whether the VAE tiles frames of height x width: as set, or (auto on accelerators) from TILE_FROM pixels
    a side, where diffusers' tiles (half the VAE's sample size, overlapping) fit the frame whole."""
    if self.vae_tiling is None:
      return min(height, width) >= TILE_FROM
    return self.vae_tiling

  @property
  def context(self) -> int:
    return int(dict(self.mesh.shape).get("context", 1)) if self.mesh is not None else 1

  def overrides(self) -> dict:
    """The model-config fields a loaded model is rebuilt with (`checkpoints.load(..., overrides=)`; fields a
    model's config does not have are left out there)."""
    fields = {"dtype": self.dtype, "attention": self.attention}
    if self.context > 1:
      fields["sequence_parallel"] = "ring"
    return fields

  def loading(self):
    """Models loaded inside are restored straight onto the mesh (replicated where the rules name no axis)."""
    return building_on(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()

  @contextlib.contextmanager
  def running(self):
    """Jitted stages traced inside run on the mesh with the activation layout of the rules."""
    if self.mesh is None:
      yield
      return
    with jax.set_mesh(self.mesh), activation_rules(self.rules):
      yield

  def cast(self, model: nnx.Module) -> nnx.Module:
    """`model` with its floating-point params in the compute dtype (in place; returned for chaining)."""
    dtype = jnp.dtype(self.dtype)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x, params))
    return model


def inference_mesh(axes: str) -> jax.sharding.Mesh:
  """A mesh of exactly the devices `axes` names (the first ones), e.g. 'context=2,data=2' on 8 devices -> 4;
  an axis of -1 takes the rest of the devices."""
  sizes = parse_axes(axes)
  available = jax.device_count()
  if -1 in sizes.values():
    return make_mesh(sizes)
  needed = math.prod(sizes.values())
  if needed > available:
    raise WonderlandError(f"--mesh {axes}: needs {needed} devices; this host has {available} "
                          f"({jax.default_backend()})")
  return make_mesh(sizes, devices=jax.devices()[:needed])


def add_flags(parser) -> None:
  """`--dtype`, `--attention`, `--mesh`, `--vae-tiling` of the commands that run the models (see `from_args`)."""
  parser.add_argument("--dtype", choices=DTYPES, default="auto",
                      help="compute dtype of every model, params cast to it (auto: bfloat16 on accelerators, "
                           "float32 on CPU)")
  parser.add_argument("--attention", choices=IMPLEMENTATIONS, default="auto",
                      help="attention kernel (auto: cudnn on NVIDIA in 16-bit, splash on TPU, chunked elsewhere)")
  parser.add_argument("--mesh", default="",
                      help="devices for one scene, e.g. context=4,data=2: guidance's two halves over data, video "
                           "tokens over context (ring attention), heads over tensor (default: one device)")
  parser.add_argument("--vae-tiling", choices=("auto", "on", "off"), default="auto",
                      help="spatially tiled VAE encode / decode (auto: on for accelerators)")


def from_args(args) -> Compute:
  tiling = {"auto": None, "on": True, "off": False}[getattr(args, "vae_tiling", "auto")]
  return Compute.create(dtype=args.dtype, attention=args.attention, mesh=args.mesh, vae_tiling=tiling)
