"""The README's gallery, made from the demo's outputs: a contact sheet, a GIF of the novel orbit, the learning curve.

    python docs/make_gallery.py                       # runs `wonderland demo` (about 90 s on 2 cores) first
    python docs/make_gallery.py --demo-out wonderland_demo --out docs/gallery

Writes into --out (default docs/gallery/):
  contact_sheet.png   rows: the ground-truth path (the input frame first), the generated video (decoded
                      latents), the generated 3D scene rendered along the input path, and along a novel orbit
                      (a path the video never showed); every 2nd frame, upscaled with nearest neighbours
  novel_orbit.gif     the novel orbit of the generated scene
  learning_curve.png  the tiny LaLRM's held-out PSNR during training (docs/lalrm_tiny_learning_curve.png)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TILE = 96  # pixels per contact-sheet tile
ROWS = (("ground_truth.mp4", "ground truth"), ("video.mp4", "generated video"),
        ("flythrough.mp4", "3D scene, input path"), ("novel_orbit.mp4", "3D scene, novel orbit"))


def _tiles(frames: np.ndarray, count: int) -> np.ndarray:
  """`count` evenly spaced frames of (N, H, W, 3) uint8, each resized (nearest) to TILE x TILE, side by side."""
  from PIL import Image  # noqa: PLC0415
  picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
  tiles = [np.asarray(Image.fromarray(frames[i]).resize((TILE, TILE), Image.Resampling.NEAREST)) for i in picks]
  gap = np.full((TILE, 4, 3), 255, np.uint8)
  return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def _label(text: str, width: int) -> np.ndarray:
  from PIL import Image, ImageDraw  # noqa: PLC0415
  image = Image.new("RGB", (width, 18), (255, 255, 255))
  ImageDraw.Draw(image).text((4, 3), text, fill=(0, 0, 0))
  return np.asarray(image)


def contact_sheet(demo_out: Path, columns: int = 7) -> np.ndarray:
  """The contact sheet (module docstring) of a demo output folder, (H, W, 3) uint8."""
  rows = []
  for name, title in ROWS:
    strip = _tiles(iio.imread(demo_out / name), columns)
    rows += [_label(title, strip.shape[1]), strip]
  return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--demo-out", default=None, help="a `wonderland demo` output folder (default: run the demo)")
  parser.add_argument("--out", default=str(REPO / "docs" / "gallery"), help="where the pictures go")
  args = parser.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    demo_out = Path(args.demo_out) if args.demo_out else Path(scratch) / "demo"
    if not args.demo_out:
      from wonderland_jax.demo import run_demo  # noqa: PLC0415
      run_demo(demo_out)
    iio.imwrite(out / "contact_sheet.png", contact_sheet(demo_out))
    orbit = iio.imread(demo_out / "novel_orbit.mp4")
    iio.imwrite(out / "novel_orbit.gif", orbit, duration=1000 / 12, loop=0)
  shutil.copyfile(REPO / "docs" / "lalrm_tiny_learning_curve.png", out / "learning_curve.png")
  print(f"wrote contact_sheet.png, novel_orbit.gif, learning_curve.png to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
