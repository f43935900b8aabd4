"""The `Gaussians` pytree: a 3D Gaussian Splatting scene.

Fields (N Gaussians):
  means:     (N, 3) centres, world coordinates.
  quats:     (N, 4) rotations as quaternions, wxyz order; need not be normalised.
  scales:    (N, 3) linear standard deviations along the rotated axes (not log).
  opacities: (N,) in [0, 1] (not logits).
  colors:    (N, C) any C >= 1: RGB or features. With `sh`, `colors` is the view-independent (degree-0)
             RGB, i.e. 0.5 + SH_C0 * f_dc in the 3DGS convention.
  sh:        optional (N, K, 3) spherical-harmonic coefficients of degree >= 1 (the 3DGS `f_rest`),
             K in {3, 8, 15} for degree 1, 2, 3. Rendered colour = max(0, colors + sum_k Y_k(dir) sh_k).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.errors import WonderlandError

SH_REST_TO_DEGREE = {0: 0, 3: 1, 8: 2, 15: 3}


@flax.struct.dataclass
class Gaussians:
  """A 3DGS scene; see the module docstring for shapes and conventions."""

  means: jax.Array
  quats: jax.Array
  scales: jax.Array
  opacities: jax.Array
  colors: jax.Array
  sh: jax.Array | None = None

  @property
  def num(self) -> int:
    return self.means.shape[0]

  @property
  def sh_degree(self) -> int:
    return 0 if self.sh is None else SH_REST_TO_DEGREE[self.sh.shape[1]]

  def validate(self) -> Gaussians:
    """Checks shapes; raises `WonderlandError` naming the field at fault. Returns self."""
    n = self.means.shape[0] if self.means.ndim == 2 else None
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
    for name, shape in expected.items():
      value = getattr(self, name)
      if value.shape != shape:
        raise WonderlandError(f"Gaussians.{name} must have shape {shape}, got {value.shape}")
    if self.colors.ndim != 2 or self.colors.shape[0] != n or self.colors.shape[1] < 1:
      raise WonderlandError(f"Gaussians.colors must have shape ({n}, C) with C >= 1, got {self.colors.shape}")
    if self.sh is not None:
      if (self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3
          or self.sh.shape[1] not in SH_REST_TO_DEGREE or self.sh.shape[1] == 0):
        raise WonderlandError(f"Gaussians.sh must have shape ({n}, K, 3) with K in (3, 8, 15), got {self.sh.shape}")
      if self.colors.shape[1] != 3:
        raise WonderlandError(f"Gaussians with sh need RGB colors (N, 3), got {self.colors.shape}")
    return self

  def check_values(self, where: str) -> Gaussians:
    """Raises `WonderlandError` '{where}: ...' unless the scene is non-empty and renderable: every value finite,
    scales > 0, opacities in [0, 1] (NaN means would frame and render a black video without an error)."""
    if self.num == 0:
      raise WonderlandError(f"{where}: the scene has no Gaussians")
    for name in ("means", "quats", "scales", "opacities", "colors", "sh"):
      value = getattr(self, name)
      if value is None:
        continue
      finite = np.isfinite(np.asarray(value)).reshape(self.num, -1).all(-1)
      if not finite.all():
        raise WonderlandError(f"{where}: {int((~finite).sum())} of {self.num} Gaussians have non-finite {name} "
                              f"(the first: Gaussian {int(np.flatnonzero(~finite)[0])})")
    if (np.asarray(self.scales) <= 0).any():
      raise WonderlandError(f"{where}: scales must be positive")
    opacities = np.asarray(self.opacities)
    if ((opacities < 0) | (opacities > 1)).any():
      raise WonderlandError(f"{where}: opacities must be in [0, 1], got values in [{opacities.min():g}, "
                            f"{opacities.max():g}]")
    return self

  def __getitem__(self, index) -> Gaussians:
    return jax.tree.map(lambda x: x[index], self)


def concatenate(parts: list[Gaussians]) -> Gaussians:
  """Joins scenes along the Gaussian axis (all with or all without `sh` of the same degree)."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *parts)
