"""The LaLRM: token alignment, output shapes, the Gaussian parameterisation, gradients to every param."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wonderland_jax.camera import Camera
from wonderland_jax.camera.rays import ray_bundle
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig, to_gaussians

TINY = dict(hidden_size=32, pose_dim=16, num_layers=2, head_dim=16, patch_size=2, gaussian_stride=16)


def _inputs(rng, batch=2, t=3, h=4, w=6):
  latents = rng.normal(size=(batch, t, h, w, 16)).astype(np.float32)
  plucker = rng.normal(size=(batch, 1 + 4 * (t - 1), 8 * h, 8 * w, 6)).astype(np.float32)
  return jnp.asarray(latents), jnp.asarray(plucker)


@pytest.mark.parametrize("stride,downsample", [(16, 1), (8, 2)])
def test_shapes(stride, downsample):
  model = LaLRM(LaLRMConfig(**dict(TINY, gaussian_stride=stride)), rngs=nnx.Rngs(0))
  latents, plucker = _inputs(np.random.default_rng(0))
  out = model(latents, plucker)
  assert out.shape == (2, 9, 32 // downsample, 48 // downsample, 12) and out.dtype == jnp.float32
  assert model.config.map_downsample == downsample


def test_frames_meet_their_own_latent_and_rays():
  """Without blocks (attention mixes all tokens), changing latent i or the rays of frames 4i-3..4i changes
  output frames 4i-3..4i only (frame 0 alone): the tokenisation and the deconv align time as documented."""
  model = LaLRM(LaLRMConfig(**dict(TINY, num_layers=0)), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  latents, plucker = _inputs(rng, batch=1)
  base = np.asarray(model(latents, plucker))
  groups = {0: [0], 1: [1, 2, 3, 4], 2: [5, 6, 7, 8]}
  for index, frames in groups.items():
    changed = np.asarray(model(latents.at[:, index].add(1.0), plucker))
    moved = np.abs(changed - base).max(axis=(0, 2, 3, 4)) > 1e-6
    assert list(np.flatnonzero(moved)) == frames, index
    for frame in frames:
      changed = np.asarray(model(latents, plucker.at[:, frame].add(1.0)))
      moved = np.abs(changed - base).max(axis=(0, 2, 3, 4)) > 1e-6
      assert list(np.flatnonzero(moved)) == frames, (index, frame)


def test_gradients_reach_every_param():
  model = LaLRM(LaLRMConfig(**dict(TINY, remat="full")), rngs=nnx.Rngs(0))
  latents, plucker = _inputs(np.random.default_rng(2))
  grads = nnx.grad(lambda m: jnp.sum(m(latents, plucker) ** 2))(model)
  for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
    assert np.abs(np.asarray(value)).max() > 0, jax.tree_util.keystr(path)


def test_remat_and_bfloat16_compute():
  latents, plucker = _inputs(np.random.default_rng(3))
  reference = LaLRM(LaLRMConfig(**TINY), rngs=nnx.Rngs(0))
  loss = lambda m: jnp.mean(m(latents, plucker) ** 2)
  expected = nnx.grad(loss)(reference)
  for policy in ("full", "minimal", "dots", "dots_all"):
    model = LaLRM(LaLRMConfig(**dict(TINY, remat=policy)), rngs=nnx.Rngs(0))
    got = nnx.grad(loss)(model)
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(expected)), jax.tree.leaves(nnx.to_pure_dict(got))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  bf16 = LaLRM(LaLRMConfig(**dict(TINY, dtype="bfloat16")), rngs=nnx.Rngs(0))
  assert bf16.blocks[0].mlp.fc1.kernel[...].dtype == jnp.float32
  out32, out16 = reference(latents, plucker), bf16(latents, plucker)
  assert out16.dtype == jnp.float32
  assert float(jnp.abs(out16 - out32).max()) < 0.05 * float(jnp.abs(out32).max())


def test_to_gaussians_parameterisation():
  config = LaLRMConfig(**TINY, near=0.5, far=10.0)
  rng = np.random.default_rng(4)
  c2w = np.stack([np.eye(4)] * 2).astype(np.float32)
  c2w[1, :3, 3] = [0.3, -0.2, 0.1]
  cameras = Camera.from_fov(jnp.asarray(c2w), 16, 12, fov_x_deg=60.0)
  raw = jnp.asarray(rng.normal(size=(2, 6, 8, 12)).astype(np.float32) * 3)
  gaussians = to_gaussians(raw, cameras, config).validate()
  assert gaussians.num == 2 * 6 * 8
  origins, directions = ray_bundle(cameras.resized(8, 6))
  distance = np.linalg.norm(np.asarray(gaussians.means).reshape(2, 6, 8, 3) - np.asarray(origins), axis=-1)
  expected_distance = 0.5 + 9.5 / (1 + np.exp(-np.asarray(raw[..., 11])))
  np.testing.assert_allclose(distance, expected_distance, rtol=1e-5)
  offsets = np.asarray(gaussians.means).reshape(2, 6, 8, 3) - np.asarray(origins)
  np.testing.assert_allclose(offsets / distance[..., None], np.asarray(directions), atol=1e-5)
  scales = np.asarray(gaussians.scales)
  assert scales.max() <= np.exp(-1.2) + 1e-6 and scales.min() > 0
  np.testing.assert_allclose(np.linalg.norm(np.asarray(gaussians.quats), axis=-1), 1.0, rtol=1e-5)
  assert 0 < float(gaussians.opacities.min()) and float(gaussians.opacities.max()) < 1
  zero = to_gaussians(jnp.zeros((2, 6, 8, 12)), cameras, config)
  np.testing.assert_allclose(zero.quats, np.tile([1.0, 0, 0, 0], (96, 1)))
  np.testing.assert_allclose(zero.scales, np.exp(-2.3), rtol=1e-6)
  np.testing.assert_allclose(zero.opacities, 1 / (1 + np.exp(2.0)), rtol=1e-6)
  np.testing.assert_allclose(zero.colors, 0.5)


def test_bad_inputs_and_configs():
  model = LaLRM(LaLRMConfig(**TINY), rngs=nnx.Rngs(0))
  latents, plucker = _inputs(np.random.default_rng(5))
  with pytest.raises(WonderlandError, match=r"plucker rays must be \(2, 9, 32, 48, 6\)"):
    model(latents, plucker[:, :8])
  with pytest.raises(WonderlandError, match="latents must be"):
    model(latents[..., :8], plucker)
  with pytest.raises(WonderlandError, match="gaussian_stride 6 must divide the token stride 16"):
    LaLRMConfig(**dict(TINY, gaussian_stride=6)).validate()
  with pytest.raises(WonderlandError, match="unknown remat policy 'some'"):
    LaLRMConfig.from_dict(dict(TINY, remat="some"))
  with pytest.raises(WonderlandError, match="unknown field"):
    LaLRMConfig.from_dict(dict(TINY, hidden=3))
