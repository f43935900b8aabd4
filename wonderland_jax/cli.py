"""The `wonderland` command line: thin wrappers that parse flags and call the library.

  wonderland render --ply scene.ply --trajectory orbit --frames 60 --size 512x512 --out orbit.mp4
  wonderland demo --out demo_out
  wonderland convert vae --src CogVideoX-5b --out checkpoints/vae --dtype bfloat16

Errors a user can fix (bad flags, missing or malformed files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import jax
import numpy as np

from wonderland_jax import convert
from wonderland_jax.convert.pipeline import COMPONENTS, convert_pipeline
from wonderland_jax.camera import PRESETS, make_trajectory, read_pose_file
from wonderland_jax.demo import run_demo
from wonderland_jax.diffusion.pipeline import VideoPipeline, resize_image
from wonderland_jax.errors import WonderlandError
from wonderland_jax.io_utils import VIDEO_EXTENSIONS, atomic_path, read_image, write_png_dir, write_video
from wonderland_jax.splat import load_ply
from wonderland_jax.splat.flythrough import fitted_trajectory, render_frames

logger = logging.getLogger("wonderland_jax")


def _size(text: str) -> tuple[int, int]:
  try:
    width, height = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--size must look like 512x288 (WIDTHxHEIGHT), got {text!r}") from None
  if width <= 0 or height <= 0:
    raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
  return width, height


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _parameter(text: str) -> tuple[str, float]:
  key, sep, value = text.partition("=")
  try:
    return key.strip().replace("-", "_"), float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--param must look like degrees=180, got {text!r}") from None


def _color(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--background must look like 1,1,1, got {text!r}") from None


def _render(args: argparse.Namespace) -> None:
  if args.out is None and args.png_dir is None:
    raise WonderlandError("render: give --out VIDEO.mp4 and/or --png-dir DIR")
  if args.out is not None and Path(args.out).suffix.lower() not in VIDEO_EXTENSIONS:
    raise WonderlandError(f"--out {args.out}: unsupported video extension; use one of {VIDEO_EXTENSIONS}")
  gaussians = load_ply(args.ply)
  width, height = args.size or (512, 512)
  if args.trajectory in PRESETS:
    parameters = dict(args.param or [])
    if args.start == "identity":
      cameras = make_trajectory(args.trajectory, args.frames, width=width, height=height, fov_deg=args.fov,
                                **parameters)
    else:
      cameras = fitted_trajectory(gaussians, args.trajectory, args.frames, width, height, fov_deg=args.fov,
                                  **parameters)
  else:
    if not os.path.exists(args.trajectory):
      raise WonderlandError(f"--trajectory {args.trajectory!r} is neither a preset ({', '.join(PRESETS)}) "
                            "nor an existing pose file")
    cameras = read_pose_file(args.trajectory, *(args.size or (None, None))).cameras
    if args.frames < len(cameras):
      cameras = cameras[np.linspace(0, len(cameras) - 1, args.frames).round().astype(int)]
  background = None if args.background is None else np.asarray(args.background, np.float32)
  if background is not None and background.shape != (gaussians.colors.shape[1],):
    raise WonderlandError(f"--background needs {gaussians.colors.shape[1]} values, got {len(background)}")
  frames = list(render_frames(gaussians, cameras, background=background))
  if args.out is not None:
    write_video(args.out, frames, fps=args.fps)
    logger.info("wrote %s (%d frames, %dx%d)", args.out, len(frames), cameras.width, cameras.height)
  if args.png_dir is not None:
    write_png_dir(args.png_dir, frames)
    logger.info("wrote %d frames to %s", len(frames), args.png_dir)


def _sample(args: argparse.Namespace) -> None:
  out = Path(args.out)
  if out.suffix.lower() not in VIDEO_EXTENSIONS:
    raise WonderlandError(f"--out {out}: unsupported video extension; use one of {VIDEO_EXTENSIONS}")
  image = read_image(args.image)
  pipe = VideoPipeline.load(args.model)
  height, width = (args.size[1], args.size[0]) if args.size else pipe.default_size
  pipe.check(args.frames, height, width)
  latents, frames = pipe.generate(resize_image(image, height, width), args.prompt,
                                  negative_prompt=args.negative_prompt, num_frames=args.frames,
                                  num_inference_steps=args.steps, guidance_scale=args.guidance,
                                  use_dynamic_cfg=args.dynamic_cfg, key=jax.random.key(args.seed))
  write_video(out, frames, fps=args.fps)
  if args.latents:
    with atomic_path(args.latents) as temporary:
      np.savez(temporary, latents=np.asarray(latents))
  logger.info("wrote %s (%d frames, %dx%d)", out, len(frames), width, height)


def _demo(args: argparse.Namespace) -> None:
  run_demo(Path(args.out), steps=args.steps, seed=args.seed)


def _convert(args: argparse.Namespace) -> None:
  if args.model == "cogvideox":
    components = args.components.split(",") if args.components else None
    convert_pipeline(args.src, args.out, components=components, overwrite=args.overwrite, dtype=args.dtype)
    return
  if args.components:
    raise WonderlandError("--components is for `wonderland convert cogvideox` (a whole pipeline)")
  convert.convert(args.model, args.src, args.out, overwrite=args.overwrite, dtype=args.dtype)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="wonderland", description=__doc__.split("\n\n")[0])
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  commands = parser.add_subparsers(dest="command", required=True)

  render = commands.add_parser("render", help="render a .ply scene along a camera path to a video / PNGs")
  render.add_argument("--ply", required=True, help="3DGS .ply file (Inria / gsplat / SuperSplat layout)")
  render.add_argument("--trajectory", default="orbit",
                      help="a preset (orbit, dolly, zoom-out, pan-left, pan-right, spiral) or a pose file: "
                           "RealEstate10K .txt (needs --size), nerfstudio transforms.json, COLMAP text model dir")
  render.add_argument("--frames", type=_positive_int, default=60,
                      help="number of frames (pose files: evenly subsampled)")
  render.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default 512x512 for presets)")
  render.add_argument("--fov", type=float, default=60.0, help="horizontal field of view of presets, degrees")
  render.add_argument("--start", choices=("auto", "identity"), default="auto",
                      help="presets start from a camera framing the scene (auto) or from the identity pose, "
                           "the input view of scenes made by `wonderland generate` (identity)")
  render.add_argument("--param", type=_parameter, action="append", metavar="KEY=VALUE",
                      help="preset parameter, repeatable (e.g. degrees=180, radius=2, distance=1)")
  render.add_argument("--background", type=_color, default=None, help="background colour, e.g. 1,1,1")
  render.add_argument("--fps", type=float, default=24.0)
  render.add_argument("--out", default=None, help="output video (.mp4 or .gif)")
  render.add_argument("--png-dir", default=None, help="output directory of frame_00000.png, ...")
  render.set_defaults(run=_render)

  sample = commands.add_parser("sample", help="image-to-video with a converted CogVideoX pipeline")
  sample.add_argument("--model", required=True, help="directory made by `wonderland convert cogvideox`")
  sample.add_argument("--image", required=True, help="the first frame (PNG/JPEG); resized to --size")
  sample.add_argument("--prompt", required=True)
  sample.add_argument("--negative-prompt", default="")
  sample.add_argument("--frames", type=_positive_int, default=49, help="video frames, 1 + 4k")
  sample.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: the model's, 720x480)")
  sample.add_argument("--steps", type=_positive_int, default=50, help="sampling steps")
  sample.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale (1 = off)")
  sample.add_argument("--dynamic-cfg", action="store_true", help="the pipeline's cosine-shaped dynamic guidance")
  sample.add_argument("--seed", type=int, default=0)
  sample.add_argument("--fps", type=float, default=8.0)
  sample.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
  sample.add_argument("--latents", default=None, help="also save the latents to this .npz")
  sample.set_defaults(run=_sample)

  demo = commands.add_parser("demo", help="the embedded default: recover a procedural scene by gradient descent "
                                          "through the rasterizer and write scene.ply, flythrough.mp4, report")
  demo.add_argument("--out", default="wonderland_demo", help="output directory")
  demo.add_argument("--steps", type=_positive_int, default=300, help="optimisation steps")
  demo.add_argument("--seed", type=int, default=0)
  demo.set_defaults(run=_demo)

  converting = commands.add_parser("convert", help="import a public diffusers checkpoint (safetensors) into a "
                                                   "wonderland checkpoint (Orbax params + model config)")
  converting.add_argument("model", choices=["cogvideox"] + sorted(convert.CONVERTERS),
                          help="one model, or cogvideox: a whole pipeline folder")
  converting.add_argument("--components", default=None,
                          help="cogvideox only: comma-separated subset of " + ",".join(COMPONENTS))
  converting.add_argument("--src", required=True,
                          help="the model folder (config.json + *.safetensors) or the pipeline root holding it")
  converting.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
  converting.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
  converting.add_argument("--dtype", choices=sorted(convert.DTYPES), default="float32",
                          help="dtype of the stored params")
  converting.set_defaults(run=_convert)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="[wonderland] %(message)s", stream=sys.stderr)
  for noisy in ("jax", "absl", "imageio", "imageio_ffmpeg"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    args.run(args)
  except WonderlandError as err:
    print(f"wonderland {args.command}: error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
