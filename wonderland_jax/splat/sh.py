"""Real spherical harmonics up to degree 3, in the 3DGS (Inria) basis and sign convention.

Basis k = l*l + (m + l) for m = -l..l; Y_k = sqrt(2) Re(Y_l^m) for m > 0, sqrt(2) Im(Y_l^|m|) for m < 0,
Y_l^0 for m = 0, where Y_l^m are the complex harmonics with the Condon-Shortley phase. Coefficient 0
(SH_C0) is the view-independent DC term; `Gaussians.sh` holds the coefficients k >= 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(directions: jax.Array, degree: int) -> jax.Array:
  """Basis values (..., (degree+1)**2) at unit `directions` (..., 3)."""
  x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
  basis = [jnp.full_like(x, SH_C0)]
  if degree >= 1:
    basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
  if degree >= 2:
    xx, yy, zz = x * x, y * y, z * z
    basis += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
              SH_C2[4] * (xx - yy)]
  if degree >= 3:
    basis += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
              SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
              SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
  if degree > 3:
    raise ValueError(f"spherical harmonics of degree {degree} > 3 are not supported")
  return jnp.stack(basis, -1)


def safe_normalize(vectors: jax.Array, axis: int = -1) -> jax.Array:
  """`vectors / |vectors|`, with zero vectors mapped to zero (finite value and gradient)."""
  squared = jnp.sum(vectors * vectors, axis=axis, keepdims=True)
  positive = squared > 0
  return vectors * jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, squared, 1.0)), 0.0)


def view_dependent_colors(colors: jax.Array, sh: jax.Array, means: jax.Array,
                          camera_position: jax.Array) -> jax.Array:
  """RGB seen from `camera_position` (3,): max(0, colors + sum_{k>=1} Y_k(dir) sh[:, k-1]).

  colors: (N, 3) DC colour (0.5 + SH_C0 * f_dc); sh: (N, K, 3) with K = (degree+1)**2 - 1;
  means: (N, 3) world; dir = unit vector from the camera to each mean (the 3DGS convention).
  """
  degree = {3: 1, 8: 2, 15: 3}[sh.shape[1]]
  directions = safe_normalize(means - camera_position)
  basis = sh_basis(directions, degree)[:, 1:]
  return jnp.maximum(colors + jnp.einsum("nk,nkc->nc", basis, sh), 0.0)
