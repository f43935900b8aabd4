"""`loss.crop` of `wonderland train vae`: random windows on the latent grid, the same pixels as a slice."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from wonderland_jax.errors import WonderlandError
from wonderland_jax.train.vae import random_crops


def test_random_crops_are_grid_aligned_slices_that_vary():
  frames = np.random.default_rng(0).uniform(size=(6, 5, 40, 48, 3)).astype(np.float32)
  corners = set()
  for seed in range(4):
    crops = np.asarray(random_crops(frames, jax.random.key(seed), 16))
    assert crops.shape == (6, 5, 16, 16, 3)
    for clip, crop in zip(frames, crops):
      # The window's corner: where its first pixel sits in the clip (the values are distinct floats).
      y, x = (int(v[0]) for v in np.nonzero(clip[0, :, :, 0] == crop[0, 0, 0, 0]))
      assert y % 8 == 0 and x % 8 == 0 and y <= 40 - 16 and x <= 48 - 16
      np.testing.assert_array_equal(crop, clip[:, y:y + 16, x:x + 16])
      corners.add((y, x))
  assert len(corners) > 4  # not one fixed window
  tall = np.asarray(random_crops(frames, jax.random.key(0), 40))  # as high as the clip: only x can move
  assert any(np.array_equal(tall[0], frames[0, :, :, x:x + 40]) for x in (0, 8))
  for bad in (12, 0, 48):
    with pytest.raises(WonderlandError, match=r"--config.loss.crop: must be a multiple of 8 in \(0, 40\]"):
      random_crops(frames, jax.random.key(0), bad)
