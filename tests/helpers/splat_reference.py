"""A slow, obvious float64 reference rasterizer (per Gaussian, then per pixel, in plain Python/numpy).

Independent of the library: its own projection, its own spherical harmonics (from scipy's complex
harmonics), its own tile rule and a sequential front-to-back loop per pixel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special


def real_sh_basis(direction: np.ndarray, degree: int) -> np.ndarray:
  """3DGS real SH basis at a unit direction: sqrt2 Re Y_l^m (m>0), sqrt2 Im Y_l^|m| (m<0), Y_l^0."""
  x, y, z = direction
  polar = math.acos(max(-1.0, min(1.0, z)))
  azimuth = math.atan2(y, x)
  values = []
  for band in range(degree + 1):
    for m in range(-band, band + 1):
      complex_value = special.sph_harm_y(band, abs(m), polar, azimuth)
      if m > 0:
        values.append(math.sqrt(2) * complex_value.real)
      elif m < 0:
        values.append(math.sqrt(2) * complex_value.imag)
      else:
        values.append(complex_value.real)
  return np.asarray(values)


def _rotation(q):
  w, x, y, z = np.asarray(q, np.float64) / max(np.linalg.norm(q), 1e-300)
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def project_one(mean, quat, scale, viewmat, K, width, height, *, near=0.01, far=1e10, eps2d=0.3):
  """Returns None (culled) or dict(mean2d, cov (dilated), det_raw, depth)."""
  rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
  px, py, pz = rotation @ mean + translation
  if not near < pz < far:
    return None
  fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
  lim_x = (cx / fx + 0.3 * 0.5 * width / fx, (width - cx) / fx + 0.3 * 0.5 * width / fx)
  lim_y = (cy / fy + 0.3 * 0.5 * height / fy, (height - cy) / fy + 0.3 * 0.5 * height / fy)
  tx = pz * min(max(px / pz, -lim_x[0]), lim_x[1])
  ty = pz * min(max(py / pz, -lim_y[0]), lim_y[1])
  jacobian = np.array([[fx / pz, 0, -fx * tx / pz ** 2], [0, fy / pz, -fy * ty / pz ** 2]])
  rs = _rotation(quat) @ np.diag(scale)
  cov = jacobian @ rotation @ rs @ rs.T @ rotation.T @ jacobian.T
  det_raw = np.linalg.det(cov)
  cov = cov + eps2d * np.eye(2)
  if np.linalg.det(cov) <= 0:
    return None
  return dict(mean2d=np.array([fx * px / pz + cx, fy * py / pz + cy]), cov=cov, det_raw=det_raw, depth=pz)


def tile_rect(mean2d, cov, width, height, tile_size, radius_rule):
  if radius_rule == "max_eigen":
    mid = 0.5 * (cov[0, 0] + cov[1, 1])
    det = np.linalg.det(cov)
    radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
    radii = (radius, radius)
  else:
    radii = (math.ceil(3 * math.sqrt(cov[0, 0])), math.ceil(3 * math.sqrt(cov[1, 1])))
  grid = (-(-width // tile_size), -(-height // tile_size))
  rect = []
  for axis in range(2):
    low = min(max(math.floor((mean2d[axis] - radii[axis]) / tile_size), 0), grid[axis])
    high = min(max(math.ceil((mean2d[axis] + radii[axis]) / tile_size), 0), grid[axis])
    rect.append((low, high))
  return rect


def render(scene: dict, viewmat, K, width, height, *, background=None, tile_size=16, near=0.01, far=1e10,
           eps2d=0.3, antialiased=False, alpha_max=0.99, radius_rule="max_eigen"):
  """scene: dict of float64 arrays (means, quats, scales, opacities, colors, optional sh).

  Returns image (H, W, C), alpha (H, W), depth (H, W) as float64 numpy arrays.
  """
  viewmat, K = np.asarray(viewmat, np.float64), np.asarray(K, np.float64)
  colors = np.asarray(scene["colors"], np.float64)
  num_channels = colors.shape[1]
  background = np.zeros(num_channels) if background is None else np.asarray(background, np.float64)
  camera_position = -viewmat[:3, :3].T @ viewmat[:3, 3]
  splats = []
  for i in range(len(scene["means"])):
    proj = project_one(scene["means"][i], scene["quats"][i], scene["scales"][i], viewmat, K, width, height,
                       near=near, far=far, eps2d=eps2d)
    if proj is None:
      continue
    rect = tile_rect(proj["mean2d"], proj["cov"], width, height, tile_size, radius_rule)
    if rect[0][1] <= rect[0][0] or rect[1][1] <= rect[1][0]:
      continue
    opacity = scene["opacities"][i]
    if antialiased:
      opacity = opacity * math.sqrt(max(proj["det_raw"] / np.linalg.det(proj["cov"]), 0.0))
    color = colors[i]
    if scene.get("sh") is not None:
      sh = np.asarray(scene["sh"][i], np.float64)
      degree = {3: 1, 8: 2, 15: 3}[len(sh)]
      direction = scene["means"][i] - camera_position
      direction = direction / np.linalg.norm(direction)
      color = np.maximum(color + real_sh_basis(direction, degree)[1:] @ sh, 0.0)
    splats.append(dict(index=i, conic=np.linalg.inv(proj["cov"]), opacity=opacity, color=color, rect=rect,
                       mean2d=proj["mean2d"], depth=proj["depth"]))
  splats.sort(key=lambda s: (s["depth"], s["index"]))

  image = np.zeros((height, width, num_channels))
  alpha_out = np.zeros((height, width))
  depth_out = np.zeros((height, width))
  for row in range(height):
    for col in range(width):
      tile_x, tile_y = col // tile_size, row // tile_size
      transmittance, color_sum, depth_sum = 1.0, np.zeros(num_channels), 0.0
      for s in splats:
        (x0, x1), (y0, y1) = s["rect"]
        if not (x0 <= tile_x < x1 and y0 <= tile_y < y1):
          continue
        dx, dy = s["mean2d"][0] - (col + 0.5), s["mean2d"][1] - (row + 0.5)
        conic = s["conic"]
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        if power > 0:
          continue
        alpha = min(alpha_max, s["opacity"] * math.exp(power))
        if alpha < 1.0 / 255.0:
          continue
        next_transmittance = transmittance * (1 - alpha)
        if next_transmittance < 1e-4:
          break
        color_sum += alpha * transmittance * s["color"]
        depth_sum += alpha * transmittance * s["depth"]
        transmittance = next_transmittance
      image[row, col] = color_sum + transmittance * background
      alpha_out[row, col] = 1 - transmittance
      depth_out[row, col] = depth_sum
  return image, alpha_out, depth_out


def random_scene(rng: np.random.Generator, num: int, *, sh_degree: int = 0, num_channels: int = 3,
                 depth: float = 4.0, spread: float = 1.5) -> dict:
  """A hard random scene in front of an identity camera: many overlaps, some Gaussians behind the camera
  and off screen, tiny and huge scales, near-zero opacities. float64 numpy arrays."""
  means = rng.normal(size=(num, 3)) * [spread, spread, 1.0] + [0, 0, depth]
  means[: num // 10, 2] = -rng.uniform(0.1, 2.0, num // 10)          # behind the camera
  means[num // 10: num // 5, 0] += rng.choice([-1, 1], num // 10) * 8  # far off screen sideways
  log_scales = rng.normal(size=(num, 3)) * 0.8 - 2.0
  log_scales[num // 5: num // 5 + 3] = -9.0                            # tiny
  log_scales[num // 5 + 3: num // 5 + 5] = 0.5                         # huge, cover many tiles
  opacities = rng.uniform(0.0, 1.0, num)
  opacities[num // 5 + 5: num // 5 + 8] = rng.uniform(0, 1e-3, 3)     # near-zero
  scene = dict(means=means, quats=rng.normal(size=(num, 4)), scales=np.exp(log_scales), opacities=opacities,
               colors=rng.uniform(0, 1, (num, num_channels)), sh=None)
  if sh_degree:
    scene["sh"] = rng.normal(size=(num, (sh_degree + 1) ** 2 - 1, 3)) * 0.3
  return scene
