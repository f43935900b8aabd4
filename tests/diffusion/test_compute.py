"""Inference compute settings (`parallel.compute`): a scene sampled over a mesh (guidance's halves over 'data',
video tokens over 'context' with ring attention) equals the one-device result; bfloat16 casts the params and
stays close; bad flags are one line naming the flag."""

import jax
import numpy as np
import pytest

from wonderland_jax.camera import make_trajectory
from wonderland_jax.cli import main
from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline
from wonderland_jax.errors import WonderlandError
from wonderland_jax.parallel.compute import Compute
from wonderland_jax.pipeline import WonderlandPipeline, generate_scene


def _image():
  return np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)


def _param_dtypes(model):
  from flax import nnx  # noqa: PLC0415
  return {str(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))}


def test_a_scene_sampled_over_four_devices_equals_one_device(converted, branch, lalrm):
  cameras = make_trajectory("orbit", 9, width=32, height=32)
  results = {}
  for mesh in ("", "context=2,data=2"):
    models = WonderlandPipeline.load(converted, branch, lalrm, compute=Compute.create(mesh=mesh))
    gaussians, extras = generate_scene(models, _image(), cameras, "a castle at dusk", key=jax.random.key(3),
                                       num_inference_steps=2, decode_video=True)
    results[mesh] = (gaussians, extras)
  one, four = results[""], results["context=2,data=2"]
  # Placed on the 4 devices, with the transformer and LaLRM switched to ring attention over 'context'.
  mesh_models = models
  assert mesh_models.video.pipeline.transformer.config.sequence_parallel == "ring"
  assert mesh_models.lalrm.config.sequence_parallel == "ring"
  assert len(four[1]["latents"].sharding.device_set) == 4
  for name in ("latents", "frames"):
    np.testing.assert_allclose(np.asarray(four[1][name]), np.asarray(one[1][name]), rtol=0,
                               atol=2e-5 * max(1.0, float(np.abs(np.asarray(one[1][name])).max())))
  np.testing.assert_allclose(np.asarray(four[0].means), np.asarray(one[0].means), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(four[0].colors), np.asarray(one[0].colors), rtol=1e-4, atol=1e-5)


def test_bfloat16_casts_every_model_and_stays_close(converted, branch):
  cameras = make_trajectory("orbit", 9, width=32, height=32)
  runs = {}
  for dtype in ("float32", "bfloat16"):
    pipe = CameraVideoPipeline.load(converted, branch, compute=Compute.create(dtype=dtype, attention="xla"))
    for model in (pipe.pipeline.transformer, pipe.pipeline.vae, pipe.pipeline.text_encoder):
      assert model.config.dtype == dtype and _param_dtypes(model) == {dtype}
    runs[dtype] = pipe.generate(_image(), "a castle at dusk", cameras, num_inference_steps=2, key=jax.random.key(0))
  (full, full_frames), (half, half_frames) = runs["float32"], runs["bfloat16"]
  assert half_frames.dtype == np.float32 and half_frames.shape == full_frames.shape == (9, 32, 32, 3)
  # bfloat16 keeps ~3 significant digits; two guided steps (x6) amplify it. Far closer than another seed's
  # video (which differs by about the latents' own size).
  error = np.abs(np.asarray(half, np.float32) - np.asarray(full)).mean()
  assert error < 0.1 * np.abs(np.asarray(full)).mean()


def test_compute_flags_are_checked(tmp_path, converted, capsys):
  with pytest.raises(WonderlandError, match="--mesh context=16: needs 16 devices; this host has 8"):
    Compute.create(mesh="context=16")
  with pytest.raises(WonderlandError, match="--dtype int8"):
    Compute.create(dtype="int8")
  image = tmp_path / "in.png"
  from wonderland_jax.io_utils import write_png  # noqa: PLC0415
  write_png(image, _image())
  base = ["sample", "--model", str(converted), "--image", str(image), "--prompt", "x", "--steps", "1", "--frames",
          "5", "--out", str(tmp_path / "out.mp4")]
  assert main(base + ["--mesh", "data=3,context=3"]) == 2
  assert "--mesh data=3,context=3: needs 9 devices; this host has 8" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exited:
    main(base + ["--attention", "flash"])
  assert exited.value.code == 2 and "argument --attention: invalid choice: 'flash'" in capsys.readouterr().err
  assert not (tmp_path / "out.mp4").exists()
  assert main(base + ["--mesh", "data=2", "--dtype", "bfloat16"]) == 0
  assert (tmp_path / "out.mp4").exists()
