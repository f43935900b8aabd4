"""Compile targets (parallel/targets.py): deviceless TPU compiles of the training steps and the rasterizer on this
CPU host (libtpu from the test extra), the attention chosen for the target and not the host, and one-line errors
for bad targets and batches that do not split over the mesh."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wonderland_jax.cli import main
from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn import attention
from wonderland_jax.parallel import targets

GPU = pytest.mark.skipif(not targets._gpu_available(), reason="no CUDA plugin (pip install -e '.[gpu]')")
TPU = pytest.mark.skipif(not targets._tpu_available(), reason="libtpu is not installed (pip install -e '.[tpu]')")


def _plan_json(tmp_path, *argv: str) -> dict:
  """`wonderland plan ARGV --json F` (which must succeed) -> the plan JSON."""
  out = tmp_path / "plan.json"
  assert main(["plan", *argv, "--json", str(out)]) == 0
  return json.loads(out.read_text())


def test_parse_target_and_its_errors():
  assert targets.parse_target("tpu-v5e:2x2") == targets.Target("tpu-v5e:2x2", "tpu", "tpu-v5e", "2x2")
  assert targets.parse_target("H200").platform == "gpu" and targets.parse_target("cpu").chip is None
  assert targets.parse_target("tpu-v5p").topology is None
  for bad in ("tpu-v9:2x2", "b200", ""):
    with pytest.raises(WonderlandError, match="--target .*: use one of cpu, h100"):
      targets.parse_target(bad)
  assert targets.gpu_topology(8) == "1x1x8" and targets.gpu_topology(64) == "1x8x8"
  with pytest.raises(WonderlandError, match="multiple of 8"):
    targets.gpu_topology(12)


def test_the_h200_spec_is_the_h100_spec_with_its_memory_and_bandwidth():
  h100, h200 = targets.gpu_spec("h100"), targets.gpu_spec("h200")
  differing = {a.strip() for a, b in zip(h100.splitlines(), h200.splitlines(), strict=True) if a != b}
  assert {line.split(":")[0] for line in differing} == {"memory_bandwidth", "device_memory_size",
                                                       "device_description_str"}
  assert "device_memory_size: 141000000000" in h200 and "core_count: 132" in h200


def test_auto_attention_follows_the_compile_target_not_the_host():
  assert attention.resolve("auto") == "chunked"  # this host: CPU
  assert attention.resolve("auto", jnp.bfloat16, platform="gpu") == "cudnn"
  assert attention.resolve("auto", jnp.float32, platform="gpu") == "chunked"  # cuDNN's fused path is 16-bit
  assert attention.resolve("auto", masked=True, platform="tpu") == "xla"
  with targets.compiling_for("tpu"):
    assert attention.resolve("auto") == "splash" and targets.compile_platform() == "tpu"
  assert targets.compile_platform() == "cpu"
  q = jnp.ones((1, 8, 2, 4))
  with pytest.raises(WonderlandError, match="'cudnn' needs an NVIDIA GPU"):
    attention.dot_product_attention(q, q, q, implementation="cudnn")
  np.testing.assert_allclose(attention.dot_product_attention(q, q, q, implementation="auto"),
                             attention.dot_product_attention(q, q, q), rtol=1e-6)


def test_a_batch_that_does_not_split_over_the_mesh_is_one_line(capfd):
  # The case at tiny size: a batch of 6 over 4 batch devices (camera_dit_5b: 24 over data=8,fsdp=8).
  assert main(["plan", "--config", "camera_dit_tiny", "--mesh", "data=2,fsdp=2", "--config.train.batch_size=6",
               "--config.base.random_config.num_layers=2", "--config.camera.controlnet_layers=1"]) == 2
  lines = [line for line in capfd.readouterr().err.strip().splitlines() if "error" in line]
  assert len(lines) == 1 and "--config.train.batch_size=6 does not split over the mesh's batch axes" in lines[0]
  assert "multiple of 4 (e.g. 8)" in lines[0] and "Traceback" not in lines[0]


def test_missing_extras_and_bad_topologies_are_one_line(monkeypatch):
  monkeypatch.setattr(targets, "_gpu_available", lambda: False)
  with pytest.raises(WonderlandError, match=r"pip install 'wonderland_jax\[gpu\]'"):
    targets.compile_devices(targets.parse_target("h100"), 1)
  with pytest.raises(WonderlandError, match="no v5e topology of 3 chips"):
    targets.compile_devices(targets.parse_target("tpu-v5e"), 3)


@TPU
def test_tpu_topologies_and_a_mesh_larger_than_one():
  devices = targets.compile_devices(targets.parse_target("tpu-v5e:2x2"), 4)
  assert len(devices) == 4 and devices[0].platform == "tpu"
  with pytest.raises(WonderlandError, match="has 4 chips"):
    targets.compile_devices(targets.parse_target("tpu-v5e:2x2"), 8)
  with pytest.raises(WonderlandError, match="libtpu rejects this topology"):
    targets.compile_devices(targets.parse_target("tpu-v5e:3x7"), 4)


@TPU
def test_lalrm_step_with_splash_attention_compiles_for_a_tpu(tmp_path):
  plan = _plan_json(tmp_path, "--config", "lalrm_tiny", "--mesh", "data=2,fsdp=2", "--target", "tpu-v5e:2x2",
                    "--config.model.attention=auto", "--config.train.batch_size=4", "--config.model.num_layers=1")
  assert plan["target"] == "tpu-v5e:2x2" and plan["accelerator"] == "TPU v5e" and plan["devices"] == 4
  assert 0 < plan["argument_bytes"] < 2 ** 30 and 0 < plan["temp_bytes"] < 2 ** 30 and plan["flops"] > 1e6
  assert plan["fits"] and plan["peak_bytes"] >= plan["argument_bytes"] + plan["temp_bytes"]


@TPU
def test_rasterizer_forward_and_backward_compile_for_a_tpu():
  from tests.helpers.gaussians import random_camera, to_gaussians  # noqa: PLC0415
  from tests.helpers.splat_reference import random_scene  # noqa: PLC0415
  from wonderland_jax.camera import Camera  # noqa: PLC0415 (only with libtpu)
  from wonderland_jax.splat.gaussians import Gaussians  # noqa: PLC0415
  from wonderland_jax.splat.rasterize import rasterize  # noqa: PLC0415
  device = targets.compile_devices(targets.parse_target("tpu-v5e:2x2"), 1)[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  rng = np.random.default_rng(0)
  gaussians, camera = to_gaussians(random_scene(rng, 1000)), random_camera(rng, 64, 64)

  def loss(g: Gaussians, cam: Camera):
    return rasterize(g, cam, capacity=20000).image.mean()

  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype,
                                                                      sharding=sharding), tree)
  with targets.compiling_for("tpu"):
    compiled = jax.jit(jax.value_and_grad(loss)).lower(abstract(gaussians), abstract(camera)).compile()
  memory = compiled.memory_analysis()
  assert memory.argument_size_in_bytes > 1000 * 4 * 10 and 0 < memory.temp_size_in_bytes < 2 ** 30
  assert memory.generated_code_size_in_bytes > 0


@GPU
def test_lalrm_step_with_cudnn_attention_compiles_for_two_h100s(tmp_path):
  # Runs where the `gpu` extra is installed (5 GB: not in CI). The CUDA plugin gives no FLOPs.
  plan = _plan_json(tmp_path, "--config", "lalrm_tiny", "--mesh", "data=2", "--target", "h100",
                    "--config.model.attention=auto", "--config.model.dtype=bfloat16", "--config.train.batch_size=2",
                    "--config.model.num_layers=1")
  assert plan["target"] == "h100" and plan["devices"] == 2 and plan["fits"]
  assert 0 < plan["argument_bytes"] < 2 ** 30 and 0 < plan["temp_bytes"] < 2 ** 30


@TPU
def test_camera_dit_step_with_splash_attention_compiles_for_a_tpu(tmp_path):
  plan = _plan_json(tmp_path, "--config", "camera_dit_tiny", "--mesh", "data=2,fsdp=2", "--target", "tpu-v5e:2x2",
                    "--config.base.attention=splash", "--config.base.dtype=bfloat16",
                    "--config.base.random_config.num_layers=2", "--config.camera.controlnet_layers=1")
  assert plan["task"] == "camera-dit" and plan["target"] == "tpu-v5e:2x2" and plan["devices"] == 4
  assert 0 < plan["argument_bytes"] < 2 ** 30 and 0 < plan["temp_bytes"] < 2 ** 30 and plan["flops"] > 1e6
  assert plan["fits"]


@TPU
def test_a_sampling_step_over_context_and_data_compiles_for_a_tpu(tmp_path, capfd):
  # One guided step of the tiny camera-guided transformer, its two halves over data, tokens over context.
  plan = _plan_json(tmp_path, "--job", "sample", "--config", "camera_dit_tiny", "--frames", "9", "--size", "32x32",
                    "--mesh", "context=2,data=2", "--target", "tpu-v5e:2x2", "--attention", "splash")
  assert plan["task"] == "sample (9x32x32)" and plan["unit"] == "run" and plan["devices"] == 4
  assert plan["method"] == "compiled whole (bfloat16, attention splash)" and plan["global_batch"] == 2
  assert 0 < plan["argument_bytes"] < 2 ** 28 and 0 < plan["temp_bytes"] < 2 ** 28 and plan["fits"]
  assert plan["flops"] > 1e6 and plan["mesh"] == {"data": 2, "fsdp": 1, "context": 2, "tensor": 1}
  # An attention the target cannot run is one line.
  assert main(["plan", "--job", "sample", "--config", "camera_dit_tiny", "--frames", "9", "--size", "32x32",
               "--mesh", "data=1", "--target", "tpu-v5e:2x2", "--attention", "cudnn"]) == 2
  lines = [line for line in capfd.readouterr().err.strip().splitlines() if "error" in line]
  assert len(lines) == 1 and "attention implementation 'cudnn' needs an NVIDIA GPU" in lines[0], lines


def test_image_to_scene_sums_the_compiled_jobs(tmp_path, capfd):
  scene = _plan_json(tmp_path, "--job", "image-to-scene", "--config", "camera_dit_tiny", "--lalrm-config",
                     "lalrm_tiny", "--frames", "9", "--size", "32x32", "--mesh", "data=2", "--steps", "10")
  printed = capfd.readouterr().out
  for job in ("encode (9x32x32)", "sample (9x32x32)", "decode (9x32x32)", "reconstruct (9x32x32)"):
    assert f"| task                              | {job} |" in printed
  assert scene["task"] == "image-to-scene (encode + 10 x sample + decode + reconstruct)"
  flops = [float(line.split("|")[2].split()[0]) for line in printed.splitlines() if line.startswith("| FLOPs")]
  encode, sample, decode, reconstruct = flops[:4]
  assert scene["flops"] == pytest.approx(encode + 10 * sample + decode + reconstruct, rel=1e-3)
  assert sample > 0 and reconstruct > 0 and scene["peak_bytes"] > 0

  assert main(["plan", "--mesh", "data=1"]) == 2
  assert "--config: required for --job train" in capfd.readouterr().err
  assert main(["plan", "--job", "sample", "--config", "camera_dit_tiny", "--mesh", "data=1",
               "--extrapolate", "2,4"]) == 2
  assert "--extrapolate is for --job train" in capfd.readouterr().err
