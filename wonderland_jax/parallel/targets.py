"""Compile targets: the chips a job is compiled for, from a host that does not have them (deviceless AOT).

    target = parse_target("tpu-v5p:4x4x4")        # 64 v5p chips, as libtpu names the topology
    devices = compile_devices(target, 64)         # compile-only devices: meshes, shardings, .lower().compile()
    mesh = make_mesh("data=8,fsdp=8", devices=devices)

Targets:
  cpu                   this host's CPU (fake devices via --xla_force_host_platform_device_count, as before);
                        memory is compared against `--accelerator`.
  h100, h200, a100      NVIDIA GPUs through the CUDA PJRT plugin (the `gpu` extra: jax[cuda12]); the compiler
                        reads the chip from a GpuTargetConfigProto text this package ships (`gpu_specs/`;
                        start the process with XLA_FLAGS=--xla_gpu_enable_triton_gemm=false, as `wonderland
                        plan` does, or large GEMMs fail to compile);
                        H200 is H100's spec with 141 GB and 4.8 TB/s (same SM count and clocks; derived,
                        not read off a device). N GPUs: one host of N when N <= 8, else N / 8 hosts of 8.
  tpu-<gen>:<topology>  TPUs through libtpu (the `tpu` extra: jax[tpu]); the topology as libtpu spells it,
                        e.g. tpu-v5e:2x2, tpu-v5p:2x2x1, tpu-v6e:4x4. `tpu-v5p` alone picks the topology
                        with the mesh's number of chips.

Memory figures of such a compile are the target compiler's own buffer assignment (its fusions, its attention
kernels); FLOPs come from XLA's cost analysis where the backend gives one (TPU, CPU; not the CUDA plugin, for
which the plan counts FLOPs on a CPU compile of the same program).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.resources

import jax

from wonderland_jax.errors import WonderlandError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str
  peak_flops: float  # dense bf16 FLOP/s per chip
  memory_bytes: float  # HBM per chip
  bandwidth: float = 0.0  # HBM bytes/s per chip


ACCELERATORS = {
    "h100": Accelerator("NVIDIA H100 SXM", 989e12, 80e9, 3.35e12),
    "h200": Accelerator("NVIDIA H200", 989e12, 141e9, 4.8e12),
    "a100": Accelerator("NVIDIA A100 80GB", 312e12, 80e9, 2.04e12),
    "tpu-v4": Accelerator("TPU v4", 275e12, 32 * GIB, 1.2e12),
    "tpu-v5e": Accelerator("TPU v5e", 197e12, 16 * GIB, 0.82e12),
    "tpu-v5p": Accelerator("TPU v5p", 459e12, 95 * GIB, 2.76e12),
    "tpu-v6e": Accelerator("TPU v6e", 918e12, 32 * GIB, 1.64e12),
}

# The chips-per-topology libtpu knows for `tpu-<gen>` without a topology (the mesh's chip count picks one).
TPU_TOPOLOGIES = {
    "v4": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"},
    "v5p": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"},
    "v5e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}
GPU_SPECS = {"h100": "h100_sxm.txtpb", "h200": "h100_sxm.txtpb", "a100": "a100_sxm_80.txtpb"}
GPUS_PER_HOST = 8
# Fields the H200 overrides in the H100 spec (HBM3e: 141 GB, 4.8 TB/s).
_H200 = {"device_memory_size": "141000000000", "memory_bandwidth": "4800000000000",
         "name": '"NVIDIA H200"', "device_description_str": '"NVIDIA H200"'}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # as given: "cpu", "h100", "tpu-v5e:2x2"
  platform: str  # "cpu" | "gpu" | "tpu"
  chip: str | None  # key of ACCELERATORS (None for cpu)
  topology: str | None = None  # libtpu's topology name ("2x2"), or None

  @property
  def accelerator(self) -> Accelerator | None:
    return ACCELERATORS.get(self.chip) if self.chip else None

  @property
  def attention(self) -> str:
    """The fused attention this target runs ('auto' resolves to it)."""
    return {"gpu": "cudnn", "tpu": "splash"}.get(self.platform, "chunked")

  @property
  def dtype(self) -> str:
    """The default compute dtype: bf16 on accelerators, float32 on CPU."""
    return "float32" if self.platform == "cpu" else "bfloat16"


_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("wonderland_compile_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
  """Traces inside are for `platform` ('cpu' | 'gpu' | 'tpu') whatever this host has: the attention kernels and
  the rasterizer's work sizes are chosen for it (`compile_platform`)."""
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def compile_platform() -> str:
  """The platform code being traced now will run on: `compiling_for`'s, else this process's default backend."""
  return _PLATFORM.get() or jax.default_backend()


TARGETS_HELP = "cpu, h100, h200, a100, tpu-v4|v5e|v5p|v6e[:TOPOLOGY] (e.g. tpu-v5e:2x2, tpu-v5p:4x4x4)"


def parse_target(spec: str) -> Target:
  """'cpu' | 'h100' | 'h200' | 'a100' | 'tpu-v5e:2x2' | 'tpu-v5p' -> Target (one-line error otherwise)."""
  name = (spec or "").strip().lower()
  if name == "cpu":
    return Target("cpu", "cpu", None)
  if name in GPU_SPECS:
    return Target(name, "gpu", name)
  if name.startswith("tpu-"):
    generation, _, topology = name[4:].partition(":")
    if generation in TPU_TOPOLOGIES:
      return Target(name, "tpu", f"tpu-{generation}", topology or None)
  raise WonderlandError(f"--target {spec!r}: use one of {TARGETS_HELP}")


def missing_extra(platform: str) -> WonderlandError:
  extra, package = {"tpu": ("tpu", "jax[tpu]"), "gpu": ("gpu", "jax[cuda12]")}[platform]
  return WonderlandError(f"compiling for {platform.upper()} needs libtpu / the CUDA plugin: pip install "
                         f"'wonderland_jax[{extra}]' (or pip install \"{package}=={jax.__version__}\")")


def _tpu_available() -> bool:
  try:
    import libtpu  # noqa: F401, PLC0415 (the optional `tpu` extra)
  except ImportError:
    return False
  return True


def _gpu_available() -> bool:
  try:
    import jax_plugins.xla_cuda12  # noqa: F401, PLC0415 (the optional `gpu` extra)
  except ImportError:
    return False
  return True


def gpu_spec(chip: str) -> str:
  """The GpuTargetConfigProto text of `chip` the CUDA compiler compiles for (shipped spec; H200 derived)."""
  text = importlib.resources.files("wonderland_jax.parallel").joinpath("gpu_specs", GPU_SPECS[chip]).read_text()
  if chip == "h200":
    lines = []
    for line in text.splitlines():
      key = line.strip().split(":", 1)[0]
      if key in _H200 and ":" in line:
        line = line[:line.index(":") + 1] + " " + _H200[key]
      lines.append(line)
    text = "\n".join(lines) + "\n"
  return text


def gpu_topology(count: int) -> str:
  """The CUDA plugin's 'slices x hosts x devices per host' for `count` GPUs (hosts of up to 8)."""
  if count <= GPUS_PER_HOST:
    return f"1x1x{count}"
  if count % GPUS_PER_HOST:
    raise WonderlandError(f"--mesh: {count} GPUs do not fill hosts of {GPUS_PER_HOST}; use a multiple of 8")
  return f"1x{count // GPUS_PER_HOST}x{GPUS_PER_HOST}"


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


@functools.lru_cache(maxsize=16)
def _topology_devices(platform: str, chip: str, topology: str) -> tuple:
  from jax.experimental import topologies  # noqa: PLC0415 (only for accelerator targets)
  if platform == "tpu":
    if not _tpu_available():
      raise missing_extra("tpu")
    name = f"{chip[4:]}:{topology}"
    try:
      return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as error:  # noqa: BLE001 (libtpu reports a bad name as several error types)
      raise WonderlandError(f"--target tpu-{name}: libtpu rejects this topology ({_first_line(error)}); known for "
                            f"{chip[4:]}: {', '.join(TPU_TOPOLOGIES[chip[4:]].values())}") from None
  if not _gpu_available():
    raise missing_extra("gpu")
  try:
    return tuple(topologies.get_topology_desc(platform="cuda", topology_name="", topology=topology,
                                              target_config=gpu_spec(chip)).devices)
  except Exception as error:  # noqa: BLE001 (the plugin reports bad specs as several error types)
    raise WonderlandError(f"--target {chip}: the CUDA plugin cannot make a {topology} topology "
                          f"({_first_line(error)})") from None


def compile_devices(target: Target, count: int) -> list:
  """`count` compile-only devices of `target` (TPU: the first `count` of its topology; GPU: `gpu_topology`)."""
  if target.platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < count:
      raise WonderlandError(f"--mesh has {count} devices; this process has {len(devices)} CPU devices (set "
                            f"--xla_force_host_platform_device_count={count} before JAX starts)")
    return devices[:count]
  if target.platform == "gpu":
    return list(_topology_devices("gpu", target.chip, gpu_topology(count)))
  generation = target.chip[4:]
  topology = target.topology
  if topology is None:
    topology = TPU_TOPOLOGIES[generation].get(count)
    if topology is None:
      raise WonderlandError(f"--target {target.name}: no {generation} topology of {count} chips is known; give one, "
                            f"e.g. --target {target.name}:{next(iter(TPU_TOPOLOGIES[generation].values()))}")
  devices = _topology_devices("tpu", target.chip, topology)
  if count > len(devices):
    raise WonderlandError(f"--mesh has {count} devices but --target tpu-{generation}:{topology} has "
                          f"{len(devices)} chips; use a larger topology or a smaller mesh")
  return list(devices[:count])

