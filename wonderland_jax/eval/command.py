"""`wonderland eval video|scene`: the paper's Tables 1 and 2 on a posed dataset (see `eval.protocol`).

    wonderland eval video --data re10k/test --format realestate10k --num 300 --model checkpoints/cogvideox-5b-i2v \
        --branch runs/camera_dit/model --inception pt_inception-2015-12-05-6726825d.pth --i3d i3d_pretrained_400.pt \
        --lpips-vgg vgg16-397923af.pth --lpips-heads lpips_v0.1_vgg.pth --out eval/re10k
    # then COLMAP on eval/re10k/clips/*/frames into colmap/<clip id>/, and the same command + --colmap colmap/
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import jax
import numpy as np

from wonderland_jax import flags
from wonderland_jax.camera.sfm import POSES_HELP, PoseSource, pose_source_flag
from wonderland_jax.data.scenes import FORMATS, scan_dataset
from wonderland_jax.errors import InputFileError, OutputError, WonderlandError
from wonderland_jax.eval.protocol import (
  EVAL_STRIDES,
  SIMILARITY_FRAMES,
  EvalRun,
  MetricNetworks,
  run_evaluation,
  sample_clips,
)
from wonderland_jax.outputs import check_writable
from wonderland_jax.parallel import compute

logger = logging.getLogger("wonderland_jax")

# The flags that decide what is generated: a rerun into the same --out must keep them (the others, the metric
# weights and --colmap, may be added in a later pass).
GENERATION_FLAGS = ("kind", "data", "format", "images_dir", "num", "stride", "seed", "frames", "size", "model",
                    "branch", "lalrm", "prompt", "negative_prompt", "steps", "guidance", "dynamic_cfg", "merge_lora",
                    "dtype", "poses")


def add_parser(commands, run_command) -> None:
  """Adds `eval` with its `video` and `scene` subcommands to the CLI's subparsers; `run_command(args)` is what
  they run (the CLI's wrapper of `run` that prints the table)."""
  evaluation = commands.add_parser(
      "eval", help="the paper's evaluation on a posed dataset: `video` (FID, FVD, RotErr, TransErr, LPIPS, PSNR, "
                   "SSIM of camera-guided videos) or `scene` (LPIPS, PSNR, SSIM of the 3D scene's renders); writes "
                   "results.md / results.json and per-clip outputs into --out, resuming a killed run")
  kinds = evaluation.add_subparsers(dest="kind", required=True)
  for kind in ("video", "scene"):
    parser = kinds.add_parser(kind, help=f"evaluate {kind} generation")
    parser.add_argument("--data", required=True,
                        help="dataset folder (layouts and how to prepare the public datasets: docs/data.md)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="dataset layout (RealEstate10K / ACID pose files, DL3DV transforms.json, COLMAP "
                             "scenes such as Tanks and Temples)")
    parser.add_argument("--images-dir", default=None, help="dl3dv / colmap: the image folder (see scan_dataset)")
    parser.add_argument("--num", type=flags.positive_int, default=300, help="clips (one per scene; the paper: 300 for "
                                                                      "RE10K and DL3DV-140, 100 for Tanks)")
    parser.add_argument("--stride", type=flags.positive_int, default=None,
                        help="source frames between generated frames (default per format: "
                             + ", ".join(f"{name} {value}" for name, value in EVAL_STRIDES.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="seeds the clip sampling and the diffusion noise")
    parser.add_argument("--frames", type=flags.positive_int, default=49, help="video frames, 1 + 4k")
    parser.add_argument("--size", type=flags.size, default=None, help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("--model", required=True, help="directory made by `wonderland convert cogvideox`")
    parser.add_argument("--branch", required=True, help="the camera branch (`wonderland train camera-dit`)")
    if kind == "scene":
      parser.add_argument("--lalrm", required=True, help="the LaLRM (`wonderland train lalrm`)")
      parser.add_argument("--poses", type=pose_source_flag, default="conditioning",
                          help="the cameras the LaLRM reconstructs with: " + POSES_HELP + "; colmap:<root> reads "
                               "<root>/<clip id>/ per clip (a clip without one uses the conditioning cameras, with "
                               "a warning); the renders are always at the ground-truth cameras (default: "
                               "%(default)s)")
    parser.add_argument("--prompt", default="", help="text prompt of every clip (default empty)")
    parser.add_argument("--negative-prompt", default="", help="what the guidance steers away from (default empty)")
    parser.add_argument("--steps", type=flags.positive_int, default=50, help="sampling steps")
    parser.add_argument("--guidance", type=flags.finite, default=6.0, help="classifier-free guidance scale")
    parser.add_argument("--dynamic-cfg", action="store_true", help="the pipeline's cosine-shaped dynamic guidance")
    parser.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the base kernels")
    parser.add_argument("--lpips-vgg", default=None, help="torchvision vgg16-397923af.pth (LPIPS backbone)")
    parser.add_argument("--lpips-heads", default=None, help="the lpips package's weights/v0.1/vgg.pth")
    if kind == "video":
      parser.add_argument("--inception", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                                                            "(FID)")
      parser.add_argument("--i3d", default=None, help="the Kinetics-400 I3D, i3d_pretrained_400.pt (FVD)")
      parser.add_argument("--colmap", default=None, help="folder of COLMAP models of the generated videos, one "
                                                         "per clip: <colmap>/<clip id>/ (RotErr, TransErr)")
    parser.add_argument("--label", default=None, help="the table's Dataset cell (default: --format)")
    parser.add_argument("--fps", type=flags.positive, default=8.0, help="of the written videos")
    parser.add_argument("--out", required=True, help="output folder; rerunning resumes it")
    compute.add_flags(parser)
    parser.set_defaults(run=run_command)


def _check_resume(out: Path, settings: dict) -> None:
  previous = out / "clips.json"
  if not previous.is_file():
    return
  before = json.loads(previous.read_text()).get("settings", {})
  changed = sorted(key for key in GENERATION_FLAGS if before.get(key) != settings.get(key))
  if changed:
    raise WonderlandError(f"--out {out}: holds an evaluation made with other settings ({', '.join(changed)}); "
                          "use another --out, or the same flags to resume it")


def run(args: argparse.Namespace) -> dict:
  """Runs (or resumes) the evaluation the flags describe; returns the table row (also in <out>/results.json)."""
  settings = {key: value for key, value in vars(args).items() if key not in ("run", "command", "verbose")}
  settings["size"] = list(args.size) if args.size else None
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    raise OutputError(f"--out {out}: is a file; give an output folder")
  check_writable(out if out.is_dir() else out.parent, "--out")
  _check_resume(out, settings)
  stride = args.stride or EVAL_STRIDES[args.format]
  networks = MetricNetworks.load(lpips_vgg=args.lpips_vgg, lpips_heads=args.lpips_heads,
                                 inception=getattr(args, "inception", None), i3d=getattr(args, "i3d", None))
  scan = scan_dataset(args.data, args.format, images_dir=args.images_dir)
  clips = sample_clips(scan, args.num, args.frames, stride, args.seed)
  if args.kind == "video":
    from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline  # noqa: PLC0415
    models = CameraVideoPipeline.load(args.model, args.branch, merge_lora=args.merge_lora,
                                     compute=compute.from_args(args))
    video = models.pipeline
  else:
    from wonderland_jax.pipeline import WonderlandPipeline, generate_scene  # noqa: PLC0415
    from wonderland_jax.splat.flythrough import render_frames  # noqa: PLC0415
    poses = PoseSource.parse(args.poses)
    if poses.kind == "colmap" and not poses.model_dir.is_dir():
      raise InputFileError(f"--poses {args.poses}: no such directory (of COLMAP models, <root>/<clip id>/)")
    if poses.kind == "sfm":
      poses.check()  # pycolmap installed, before loading
    models = WonderlandPipeline.load(args.model, args.branch, args.lalrm, merge_lora=args.merge_lora,
                                    compute=compute.from_args(args))
    video = models.video.pipeline
  height, width = (args.size[1], args.size[0]) if args.size else models.default_size
  video.check(args.frames, height, width)
  options = dict(negative_prompt=args.negative_prompt, num_frames=args.frames, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, use_dynamic_cfg=args.dynamic_cfg)

  def generate(clip, image: np.ndarray, cameras):
    key = jax.random.fold_in(jax.random.key(args.seed), clip.number)  # the same whether resumed or not
    if args.kind == "video":
      return models.generate(image, args.prompt, cameras, key=key, **options)[1]
    source, missing = poses, None
    if poses.kind == "colmap":  # one model per clip
      source = PoseSource("colmap", poses.model_dir / clip.id)
      if not source.model_dir.is_dir():
        missing, source = source, PoseSource()
        logger.warning("clip %s: no COLMAP model %s; reconstructing from the conditioning cameras", clip.id,
                       missing.model_dir)
    gaussians, extras = generate_scene(models, image, cameras, args.prompt, key=key, poses=source, **options)
    record = extras["poses"] | ({} if missing is None else dict(requested=str(missing), fallback="no model"))
    views = extras["conditioning_cameras"][:SIMILARITY_FRAMES]  # the ground-truth views, whatever the poses
    return np.stack(list(render_frames(gaussians, views, desc="rendering views"))), {"poses": record}

  label = args.label or args.format
  colmap = Path(args.colmap) if getattr(args, "colmap", None) else None
  row = run_evaluation(EvalRun(args.kind, scan, clips, out, networks, height, width, label, colmap, settings,
                               args.fps), generate)
  return row
