"""The `wonderland` command line: thin wrappers that parse flags and call the library.

  wonderland render --ply scene.ply --trajectory orbit --frames 60 --size 512x512 --out orbit.mp4
  wonderland demo --out demo_out
  wonderland convert vae --src CogVideoX-5b --out checkpoints/vae --dtype bfloat16
  wonderland generate-video --model checkpoints/cogvideox-5b-i2v --branch runs/camera_dit/model --image in.png \
      --trajectory orbit --out video.mp4
  wonderland generate --model checkpoints/cogvideox-5b-i2v --branch runs/camera_dit/model \
      --lalrm runs/lalrm/model --image in.png --trajectory orbit --out scene_out/

Errors a user can fix (bad flags, missing or malformed files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from wonderland_jax import convert, flags
from wonderland_jax.camera import PRESETS, make_trajectory, read_pose_file
from wonderland_jax.camera.sfm import POSES_HELP, PoseSource, pose_source_flag
from wonderland_jax.convert.pipeline import COMPONENTS, convert_pipeline
from wonderland_jax.demo import run_demo
from wonderland_jax.diffusion.pipeline import VideoPipeline, resize_image
from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval import command as eval_command
from wonderland_jax.io_utils import VIDEO_EXTENSIONS, read_image, write_png_sequence, write_video
from wonderland_jax.outputs import Outputs, check_output_directory, check_output_file
from wonderland_jax.parallel import compute
from wonderland_jax.parallel.targets import TARGETS_HELP
from wonderland_jax.splat import load_scene
from wonderland_jax.splat.flythrough import fitted_trajectory, render_frames

logger = logging.getLogger("wonderland_jax")

DEFAULT_VIDEO_FRAMES = 49  # CogVideoX-5B-I2V's: 13 latent frames


def _render(args: argparse.Namespace) -> None:
  if args.out is None and args.png_dir is None:
    raise WonderlandError("render: give --out VIDEO.mp4 and/or --png-dir DIR")
  with Outputs() as outputs:  # both checked before any rendering; both land or neither does
    video = None if args.out is None else outputs.file(args.out, flag="--out", suffixes=VIDEO_EXTENSIONS)
    pngs = None if args.png_dir is None else outputs.directory(args.png_dir, flag="--png-dir", manifest=False)
    gaussians = load_scene(args.ply)
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
      _check_trajectory(args.trajectory)
      cameras = read_pose_file(args.trajectory, *(args.size or (None, None))).cameras
      if args.frames < len(cameras):
        cameras = cameras[np.linspace(0, len(cameras) - 1, args.frames).round().astype(int)]
    background = None if args.background is None else np.asarray(args.background, np.float32)
    if background is not None and background.shape != (gaussians.colors.shape[1],):
      raise WonderlandError(f"--background needs {gaussians.colors.shape[1]} values, got {len(background)}")
    frames = list(render_frames(gaussians, cameras, background=background))
    if video is not None:
      write_video(video, frames, fps=args.fps)
    if pngs is not None:
      write_png_sequence(pngs, frames)
  logger.info("rendered %d frames, %dx%d", len(frames), cameras.width, cameras.height)


def _video_outputs(outputs: Outputs, args: argparse.Namespace) -> tuple:
  """`sample` / `generate-video`: stages --out (a video) and --latents (an .npz, when given), checked up front."""
  video = outputs.file(args.out, flag="--out", suffixes=VIDEO_EXTENSIONS)
  latents = None if not args.latents else outputs.file(args.latents, flag="--latents", suffixes=(".npz",))
  return video, latents


def _load_with_image(args: argparse.Namespace, load):
  """Reads --image, loads the pipeline with `load()`; returns (the pipeline, the first frame resized to the
  video size: --size or the model's)."""
  image = read_image(args.image)
  pipe = load()
  height, width = (args.size[1], args.size[0]) if args.size else pipe.default_size
  return pipe, resize_image(image, height, width)


def _sampling_options(args: argparse.Namespace, num_frames: int) -> dict:
  """The `generate` keywords the video commands share."""
  return dict(negative_prompt=args.negative_prompt, num_frames=num_frames, num_inference_steps=args.steps,
              guidance_scale=args.guidance, use_dynamic_cfg=args.dynamic_cfg, key=jax.random.key(args.seed))


def _write_video_outputs(staged: tuple, args: argparse.Namespace, latents, frames: np.ndarray) -> None:
  """Writes the frames and the latents to the staging paths of `_video_outputs` (committed by `Outputs`)."""
  video, latents_path = staged
  write_video(video, frames, fps=args.fps)
  if latents_path is not None:
    np.savez(latents_path, latents=np.asarray(latents))
  logger.info("%d frames, %dx%d", len(frames), frames.shape[2], frames.shape[1])


def _sample(args: argparse.Namespace) -> None:
  with Outputs() as outputs:
    staged = _video_outputs(outputs, args)
    from wonderland_jax.pipeline import pipeline_directory  # noqa: PLC0415
    pipe, image = _load_with_image(args, lambda: VideoPipeline.load(pipeline_directory(args.model),
                                                                    compute=compute.from_args(args)))
    pipe.check(args.frames, *image.shape[:2])
    latents, frames = pipe.generate(image, args.prompt, **_sampling_options(args, args.frames))
    _write_video_outputs(staged, args, latents, frames)


def _video_trajectory(args: argparse.Namespace, width: int, height: int):
  """`generate-video`'s cameras at the video size: a preset with --frames (default 49) cameras, or the pose
  file, whose length --frames (when given) must equal."""
  if args.trajectory in PRESETS:
    return make_trajectory(args.trajectory, args.frames or DEFAULT_VIDEO_FRAMES, width=width, height=height,
                           fov_deg=args.fov, **dict(args.param or []))
  if args.param:
    raise WonderlandError(f"--param is for the presets ({', '.join(PRESETS)}); --trajectory {args.trajectory} is a "
                          "pose file, whose cameras are used as they are")
  cameras = read_pose_file(args.trajectory, width, height).cameras
  if args.frames is not None and args.frames != len(cameras):
    raise WonderlandError(f"--frames {args.frames} but --trajectory {args.trajectory} has {len(cameras)} poses; "
                          "camera control needs one pose per frame (leave out --frames to use them all)")
  return cameras


def _check_trajectory(trajectory: str) -> None:
  if trajectory not in PRESETS and not os.path.exists(trajectory):
    raise WonderlandError(f"--trajectory {trajectory!r} is neither a preset ({', '.join(PRESETS)}) "
                          "nor an existing pose file")


def _generate_video(args: argparse.Namespace) -> None:
  from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline  # noqa: PLC0415 (keeps the CLI light)
  _check_trajectory(args.trajectory)
  with Outputs() as outputs:
    staged = _video_outputs(outputs, args)
    from wonderland_jax.pipeline import resolve_model  # noqa: PLC0415
    model, branch, _ = resolve_model(args.model, args.branch, need_lalrm=False)
    pipe, image = _load_with_image(
        args, lambda: CameraVideoPipeline.load(model, branch, merge_lora=args.merge_lora,
                                         compute=compute.from_args(args)))
    cameras = _video_trajectory(args, image.shape[1], image.shape[0])
    latents, frames = pipe.generate(image, args.prompt, cameras, **_sampling_options(args, len(cameras)))
    _write_video_outputs(staged, args, latents, frames)


def _generate(args: argparse.Namespace) -> None:
  from wonderland_jax.pipeline import WonderlandPipeline, generate_scene, resolve_model, save_generation  # noqa: PLC0415
  started = time.perf_counter()
  check_output_directory(args.out, args.overwrite)
  _check_trajectory(args.trajectory)
  PoseSource.parse(args.poses).check()  # pycolmap installed / the COLMAP model readable, before loading
  models, image = _load_with_image(
      args, lambda: WonderlandPipeline.load(*resolve_model(args.model, args.branch, args.lalrm),
                                      merge_lora=args.merge_lora, compute=compute.from_args(args)))
  seconds = {"loading": time.perf_counter() - started}
  cameras = _video_trajectory(args, image.shape[1], image.shape[0])
  gaussians, extras = generate_scene(models, image, cameras, args.prompt, **_sampling_options(args, len(cameras)),
                                     decode_video=args.decode_video, poses=args.poses)
  inputs = {key: value for key, value in vars(args).items()
            if key not in ("run", "argv", "overrides", "accepts_overrides", "command", "verbose")}
  names = save_generation(args.out, gaussians, extras, inputs=inputs, seconds=seconds | extras["seconds"],
                          started=started, fps=args.fps)
  print(f"wonderland generate: {gaussians.num} Gaussians in {time.perf_counter() - started:.0f}s; wrote "
        f"{', '.join(names)} to {args.out}")


def _demo(args: argparse.Namespace) -> None:
  from wonderland_jax.demo import next_steps  # noqa: PLC0415
  out = Path(args.out)
  report = run_demo(out, steps=args.steps, seed=args.seed, scene=args.scene, overwrite=args.overwrite)
  psnr = report["psnr"]
  print(f"wonderland demo: {report['num_gaussians']} Gaussians in {report['total_seconds']:.0f}s; flythrough PSNR "
        f"{psnr['flythrough']:.2f} dB vs the ground truth (the LaLRM on the true latents: "
        f"{psnr['lalrm_on_ground_truth_latents']:.2f} dB)\n{next_steps(out)}")


def _eval(args: argparse.Namespace) -> None:
  from wonderland_jax.eval.command import run  # noqa: PLC0415 (keeps the CLI light)
  from wonderland_jax.eval.protocol import markdown_table  # noqa: PLC0415
  row = run(args)
  print(markdown_table(args.kind, [row]), end="")
  print(f"wonderland eval {args.kind}: {row['clips']} clips; tables in {Path(args.out) / 'results.md'} and "
        f"{Path(args.out) / 'results.json'}")


def _convert(args: argparse.Namespace) -> None:
  if args.model == "cogvideox":
    components = args.components.split(",") if args.components else None
    convert_pipeline(args.src, args.out, components=components, overwrite=args.overwrite, dtype=args.dtype)
    return
  if args.components:
    raise WonderlandError("--components is for `wonderland convert cogvideox` (a whole pipeline)")
  convert.convert(args.model, args.src, args.out, overwrite=args.overwrite, dtype=args.dtype)


def _train(args: argparse.Namespace) -> None:
  from wonderland_jax.parallel import initialize  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415 (keeps `wonderland render` light)
  from wonderland_jax.train.loop import check_config, train  # noqa: PLC0415
  from wonderland_jax.train.tasks import make_task  # noqa: PLC0415
  from wonderland_jax.train.workdir import check_workdir  # noqa: PLC0415
  check_workdir(args.workdir)
  config = load_config(args.config, args.overrides)
  check_config(config)
  initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
  task = make_task(args.model, config)
  result = train(task, config, args.workdir, force=args.force)
  if result.status != "finished":
    logger.info("stopped at step %d (%s); run the same command again to resume", result.step, result.status)
    return EXIT_PREEMPTED if result.status == "preempted" else EXIT_INTERRUPTED
  logger.info("trained %d steps; model in %s", result.step, Path(args.workdir) / "model")
  return 0


def _plan(args: argparse.Namespace) -> int:
  from wonderland_jax.parallel.mesh import parse_axes  # noqa: PLC0415
  from wonderland_jax.parallel.targets import ACCELERATORS, compile_devices, parse_target  # noqa: PLC0415
  sizes, dcn = parse_axes(args.mesh), parse_axes(args.dcn)
  if -1 in sizes.values() or -1 in dcn.values():
    raise WonderlandError(f"--mesh {args.mesh}: give every axis size (a plan has no devices to fill in)")
  if args.job == "train" and not args.config:
    raise WonderlandError("--config: required for --job train (a training config file or a name in configs/)")
  target = parse_target(args.target)
  accelerator_name = args.accelerator or target.chip or "h100"
  if accelerator_name not in ACCELERATORS:
    raise WonderlandError(f"--accelerator {args.accelerator!r}: one of {sorted(ACCELERATORS)}")
  if args.json:
    check_output_file(args.json, flag="--json", suffixes=(".json",))
  devices = int(np.prod(list(sizes.values())) * np.prod(list(dcn.values())))
  # XLA reads its flags once per process, so a plan that needs some runs in a fresh process started with them
  # (which reports its own errors: one line, exit 2). CPU: the fake devices must exist before JAX starts its CPU
  # backend. GPU: without triton GEMMs off, deviceless compiles of large GEMMs fail ("Couldn't find output tile
  # sizes").
  needed = {"cpu": f"--xla_force_host_platform_device_count={devices}",
            "gpu": "--xla_gpu_enable_triton_gemm=false"}.get(target.platform)
  if needed and os.environ.get(_PLAN_CHILD) != str(devices):
    import subprocess  # noqa: PLC0415
    environment = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {needed}".strip(),
                       **{_PLAN_CHILD: str(devices)})
    if target.platform == "cpu":
      environment["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "wonderland_jax.cli", *args.argv], env=environment).returncode
  from wonderland_jax.parallel.mesh import make_mesh  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  from wonderland_jax.train.plan import plan_config  # noqa: PLC0415
  depths = None
  if args.extrapolate:
    try:
      depths = tuple(int(v) for v in args.extrapolate.split(","))
    except ValueError:
      depths = ()
    if len(depths) != 2:
      raise WonderlandError(f"--extrapolate {args.extrapolate!r}: two block counts like 2,4")
  mesh = make_mesh(args.mesh, dcn=args.dcn or None, devices=compile_devices(target, devices))
  accelerator = ACCELERATORS[accelerator_name]
  jobs = {}
  if args.job == "train":
    plan = plan_config(load_config(args.config, args.overrides), mesh, model=args.model, extrapolate=depths,
                       target=target)
  else:
    plan, jobs = _plan_inference(args, mesh, target, accelerator)
  print(plan.table(accelerator, args.mfu))
  if not plan.fits(accelerator):
    logger.warning("this plan needs %.1f GiB per device; %s has %.0f GiB: shard further (fsdp / tensor / context) "
                   "or rematerialise more", plan.peak_bytes / 2 ** 30, accelerator.name,
                   accelerator.memory_bytes / 2 ** 30)
  if args.json:
    with Outputs() as outputs:
      report = plan.to_dict(accelerator, args.mfu)
      if len(jobs) > 1:
        report["jobs"] = {name: job.plan.to_dict(accelerator, args.mfu) for name, job in jobs.items()}
      outputs.file(args.json, flag="--json").write_text(json.dumps(report, indent=2) + "\n")
  return 0


_PLAN_CHILD = "WONDERLAND_PLAN_DEVICES"


def _plan_inference(args: argparse.Namespace, mesh, target, accelerator):
  """`plan --job sample|encode|decode|reconstruct|image-to-scene`: prints each job's table; returns (the plan of
  the job, or image-to-scene's sum of them, {job: JobPlan})."""
  from wonderland_jax.parallel.compute import TILE_FROM  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  from wonderland_jax.train.plan_jobs import Sizes, image_to_scene, plan_job  # noqa: PLC0415
  if args.extrapolate:
    raise WonderlandError("--extrapolate is for --job train; inference jobs compile whole")
  config = load_config(args.config or "camera_dit_5b", args.overrides)
  names = ("encode", "sample", "decode", "reconstruct") if args.job == "image-to-scene" else (args.job,)
  lalrm_config = load_config(args.lalrm_config, []) if "reconstruct" in names else None
  dtype = args.dtype if args.dtype != "auto" else ("float32" if target.platform == "cpu" else "bfloat16")
  width, height = args.size
  sizes = Sizes(frames=args.frames, height=height, width=width, vae_tiling=min(height, width) >= TILE_FROM)
  jobs = {}
  for name in names:
    jobs[name] = plan_job(name, config, mesh, target=target, lalrm_config=lalrm_config, dtype=dtype,
                          attention=args.attention, sizes=sizes)
    if len(names) > 1:
      print(jobs[name].plan.table(accelerator, args.mfu) + "\n")
  return (image_to_scene(jobs, steps=args.steps) if args.job == "image-to-scene" else jobs[args.job].plan), jobs


def _prepare_latents(args: argparse.Namespace) -> None:
  from wonderland_jax.data.latent_writer import prepare_latents  # noqa: PLC0415
  from wonderland_jax.models.vae import load_vae  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  config = load_config(args.config, args.overrides)
  cache = prepare_latents(config, load_vae(config.vae), args.out, num_clips=args.num_clips, shard_size=args.shard_size,
                          seed=args.seed, batch_size=args.batch_size, image_codec=args.image_codec,
                          overwrite=args.overwrite)
  logger.info("wrote %d clips to %s; train from it with --config.data.source=latents --config.data.root=%s "
              "--config.data.encode_frames=False", len(cache), args.out, args.out)


def _generate_latents(args: argparse.Namespace) -> None:
  from wonderland_jax.data import generated  # noqa: PLC0415 (keeps the CLI light)
  from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline  # noqa: PLC0415
  process_index, process_count = _process_split(args)
  if args.pack_only:
    (Path(args.out) / generated.PACK_LOCK).unlink(missing_ok=True)
    cache = generated.pack_generated(args.out)
    print(f"wonderland generate-latents: packed {len(cache)} samples in {args.out}")
    return
  for flag in ("model", "branch", "images", "poses", "num"):
    if getattr(args, flag) is None:
      raise WonderlandError(f"--{flag} is required (unless --pack-only)")
  generated.image_prompts(args.images), generated.pose_files(args.poses)  # bad folders: before loading models
  pipe = CameraVideoPipeline.load(args.model, args.branch, merge_lora=args.merge_lora, compute=compute.from_args(args))
  height, width = (args.size[1], args.size[0]) if args.size else pipe.default_size
  settings = generated.GenerationSettings(
      num_samples=args.num, num_frames=args.frames, height=height, width=width, num_target_views=args.target_views,
      stride=generated.default_stride(args.stride), seed=args.seed, prompt=args.prompt,
      negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
      model=str(Path(args.model).resolve()), branch=str(Path(args.branch).resolve()),
      images=str(Path(args.images).resolve()), poses=str(Path(args.poses).resolve()), image_codec=args.image_codec,
      pair_by_name=args.pair_by_name)
  cache = generated.generate_latents(pipe, settings, args.out, process_index=process_index,
                                     process_count=process_count)
  if cache is not None:
    print(f"wonderland generate-latents: {len(cache)} samples in {args.out}; train the LaLRM on them with "
          f"--config.data.source=latents --config.data.root={args.out} (or as one source of a mixture)")


def _process_split(args: argparse.Namespace) -> tuple[int, int]:
  """(index, count) of this process: the flags, else SLURM's task id / count, else (0, 1)."""
  count = args.process_count or int(os.environ.get("SLURM_NTASKS", 1))
  index = args.process_index if args.process_index is not None else int(os.environ.get("SLURM_PROCID", 0))
  if not 0 <= index < count:
    raise WonderlandError(f"--process-index {index} must be in [0, --process-count {count})")
  return index, count


def _stride(text: str) -> tuple[int, int]:
  """--stride N or MIN,MAX."""
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) not in (1, 2) or min(values) < 1 or values[0] > values[-1]:
    raise argparse.ArgumentTypeError(f"{text!r}: a stride N or a range MIN,MAX of positive integers")
  return (values[0], values[-1])


def _reconstruct(args: argparse.Namespace) -> None:
  from wonderland_jax.reconstruct import reconstruct_files  # noqa: PLC0415
  reconstruct_files(args.model, args.video, args.cameras, args.out, vae=args.vae, size=args.size,
                    render=args.render, fps=args.fps)


def _add_camera_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of camera-guided generation (`generate-video`, `generate`)."""
  parser.add_argument("--branch", default=None,
                      help="the camera branch checkpoint (`<workdir>/model` of `wonderland train camera-dit`; "
                           "default: branch/ of a --model folder with pipeline/, branch/, lalrm/ or of demo)")
  parser.add_argument("--trajectory", required=True,
                      help="a preset (" + ", ".join(PRESETS) + "; --fov, --param) or a pose file with one camera "
                           "per frame: RealEstate10K .txt, nerfstudio transforms.json, COLMAP model dir (.txt/.bin). "
                           "Re-based on the first camera and scale-normalised as in training")
  parser.add_argument("--prompt", default="", help="text prompt (default empty)")
  parser.add_argument("--frames", type=flags.positive_int, default=None,
                      help=f"video frames, 1 + 4k (default: {DEFAULT_VIDEO_FRAMES} for presets, the pose "
                           "file's length for pose files, which must equal it)")
  parser.add_argument("--fov", type=flags.fov, default=60.0, help="horizontal field of view of presets, degrees")
  parser.add_argument("--param", type=flags.parameter, action="append", metavar="KEY=VALUE",
                      help="preset parameter, repeatable (e.g. degrees=90, radius=2, distance=1)")
  parser.add_argument("--merge-lora", action="store_true",
                      help="fold the branch's LoRA adapters into the base weights (faster; same output up to "
                           "rounding)")


def _add_video_flags(parser: argparse.ArgumentParser) -> None:
  """The flags `sample` and `generate-video` share."""
  _add_sampling_flags(parser)
  parser.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
  parser.add_argument("--latents", default=None, help="also save the latents to this .npz")


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of every command that samples a video."""
  parser.add_argument("--model", required=True, help="directory made by `wonderland convert cogvideox`, a folder "
                      "with pipeline/, branch/, lalrm/, or `demo` (the shipped tiny models)")
  parser.add_argument("--image", required=True, help="the first frame (PNG/JPEG); resized to --size")
  parser.add_argument("--negative-prompt", default="", help="what the guidance steers away from (default empty)")
  parser.add_argument("--size", type=flags.size, default=None, help="WIDTHxHEIGHT (default: the model's, 720x480)")
  parser.add_argument("--steps", type=flags.positive_int, default=50, help="sampling steps")
  parser.add_argument("--guidance", type=flags.finite, default=6.0, help="classifier-free guidance scale (1 = off)")
  parser.add_argument("--dynamic-cfg", action="store_true", help="the pipeline's cosine-shaped dynamic guidance")
  parser.add_argument("--seed", type=int, default=0, help="seeds the sampling noise")
  parser.add_argument("--fps", type=flags.positive, default=8.0, help="frame rate of the written videos")
  compute.add_flags(parser)


def _version() -> str:
  from importlib import metadata  # noqa: PLC0415
  try:
    return metadata.version("wonderland_jax")
  except metadata.PackageNotFoundError:  # run from a source tree without installing
    return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="wonderland", description=__doc__.split("\n\n")[0])
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
  commands = parser.add_subparsers(dest="command", required=True)

  render = commands.add_parser("render", help="render a .ply scene along a camera path to a video / PNGs")
  render.add_argument("--ply", required=True, help="scene file: 3DGS .ply (Inria / gsplat / SuperSplat, also "
                      "compressed) or antimatter15 .splat")
  render.add_argument("--trajectory", default="orbit",
                      help="a preset (orbit, dolly, zoom-out, pan-left, pan-right, spiral) or a pose file: "
                           "RealEstate10K .txt (needs --size), nerfstudio transforms.json, COLMAP model (.txt/.bin)")
  render.add_argument("--frames", type=flags.positive_int, default=60,
                      help="number of frames (pose files: evenly subsampled)")
  render.add_argument("--size", type=flags.size, default=None, help="WIDTHxHEIGHT (default 512x512 for presets)")
  render.add_argument("--fov", type=flags.fov, default=60.0, help="horizontal field of view of presets, degrees")
  render.add_argument("--start", choices=("auto", "identity"), default="auto",
                      help="presets start from a camera framing the scene (auto) or from the identity pose, "
                           "the input view of scenes made by `wonderland generate` (identity)")
  render.add_argument("--param", type=flags.parameter, action="append", metavar="KEY=VALUE",
                      help="preset parameter, repeatable (e.g. degrees=180, radius=2, distance=1)")
  render.add_argument("--background", type=flags.color, default=None, help="background colour, e.g. 1,1,1")
  render.add_argument("--fps", type=flags.positive, default=24.0, help="frame rate of the video")
  render.add_argument("--out", default=None, help="output video (.mp4 or .gif)")
  render.add_argument("--png-dir", default=None, help="output directory of frame_00000.png, ...")
  render.set_defaults(run=_render)

  sample = commands.add_parser("sample", help="image-to-video with a converted CogVideoX pipeline")
  sample.add_argument("--prompt", required=True, help="text prompt")
  sample.add_argument("--frames", type=flags.positive_int, default=DEFAULT_VIDEO_FRAMES, help="video frames, 1 + 4k")
  _add_video_flags(sample)
  sample.set_defaults(run=_sample)

  generate = commands.add_parser(
      "generate-video", help="camera-guided image-to-video: a converted CogVideoX pipeline plus a camera branch "
                             "(`wonderland train camera-dit`) follows a camera trajectory")
  _add_camera_flags(generate)
  _add_video_flags(generate)
  generate.set_defaults(run=_generate_video)

  scene = commands.add_parser(
      "generate", help="image + camera path -> 3D Gaussian scene: camera-guided video latents, then the LaLRM on "
                       "them (no decoding); writes scene.ply, flythrough.mp4, novel_orbit.mp4, latents.npz and "
                       "report.json into --out")
  scene.add_argument("--lalrm", default=None, help="a trained LaLRM (`<workdir>/model` of `wonderland train lalrm`) "
                                                   "that reads this pipeline's VAE latents (default: lalrm/ of a "
                                                   "--model folder or of demo)")
  _add_camera_flags(scene)
  _add_sampling_flags(scene)
  scene.add_argument("--decode-video", action="store_true", help="also decode the latents to video.mp4")
  scene.add_argument("--poses", type=pose_source_flag, default="conditioning",
                     help="the cameras the LaLRM reconstructs with: " + POSES_HELP + " (default: %(default)s; sfm "
                          "decodes the video, so video.mp4 is written)")
  scene.add_argument("--out", required=True, help="output directory (written whole or not at all)")
  scene.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out directory")
  scene.set_defaults(run=_generate)

  from wonderland_jax.demo import DEFAULT_STEPS as DEMO_STEPS  # noqa: PLC0415
  demo = commands.add_parser(
      "demo", help="the embedded default: the whole pipeline (camera-guided video latents, LaLRM, rasterizer) on "
                   "tiny models shipped with the package, from a held-out synthetic scene's first frame and camera "
                   "path; writes scene.ply, videos and a report (PSNR against the scene's ground truth)")
  demo.add_argument("--out", default="wonderland_demo", help="output directory (written whole or not at all)")
  demo.add_argument("--steps", type=flags.positive_int, default=DEMO_STEPS, help="sampling steps")
  demo.add_argument("--seed", type=int, default=0, help="sampling seed")
  demo.add_argument("--scene", type=int, default=0, help="which held-out synthetic scene")
  demo.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out directory")
  demo.set_defaults(run=_demo)

  eval_command.add_parser(commands, _eval)

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

  training = commands.add_parser(
      "train", help="train a model with a config file; reruns on the same --workdir resume from its last "
                    "checkpoint; extra --config.a.b=value flags override the config")
  training.add_argument("model", choices=["lalrm", "vae", "camera-dit"],
                        help="lalrm: the reconstruction model; vae: a small CogVideoX VAE for the tiny configs; "
                             "camera-dit: the camera branches of the video transformer (configs/camera_dit_*.py)")
  training.add_argument("--config", required=True,
                        help="a config file (configs/lalrm_tiny.py) or the name of one in configs/")
  training.add_argument("--workdir", required=True,
                        help="checkpoints/, tensorboard/, metrics.jsonl, config.json and the final model/")
  training.add_argument("--coordinator", default=None,
                        help="multi-process jobs: host:port of process 0 (SLURM and Cloud TPU pods are detected "
                             "without it; see docs/parallel.md)")
  training.add_argument("--num-processes", type=int, default=None, help="with --coordinator: number of processes")
  training.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process's index")
  training.add_argument("--force", action="store_true",
                        help="take over the workdir's lock (wonderland.lock) even if its run looks alive")
  training.set_defaults(run=_train, accepts_overrides=True)

  planning = commands.add_parser(
      "plan", help="compile a config's training step or a full-size inference job (--job) for a device mesh "
                   "with abstract inputs, on fake CPU devices or deviceless for a GPU / TPU (--target; nothing "
                   "allocated), and print per-device memory, FLOPs and the implied time; extra "
                   "--config.a.b=value flags override the config")
  planning.add_argument("--config", default=None, help="a training config file or the name of one in configs/ "
                        "(required for --job train; inference jobs read the camera-DiT config, default camera_dit_5b)")
  planning.add_argument("--job", choices=("train", "sample", "encode", "decode", "reconstruct", "image-to-scene"),
                        default="train", help="what to compile: the config's training step, or an inference job at "
                        "full size: one guided sampling step, the VAE encoding the image / decoding the video "
                        "(tiled), the LaLRM + one rendered view, or image-to-scene (their sum with --steps steps)")
  planning.add_argument("--lalrm-config", default="lalrm_highres", help="the LaLRM of --job reconstruct")
  planning.add_argument("--frames", type=flags.positive_int, default=49, help="inference jobs: video frames")
  planning.add_argument("--size", type=flags.size, default=(720, 480), help="inference jobs: WIDTHxHEIGHT")
  planning.add_argument("--steps", type=flags.positive_int, default=50, help="image-to-scene: sampling steps")
  planning.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="inference jobs: params and compute (auto: bfloat16 on accelerator targets)")
  planning.add_argument("--attention", choices=("auto", "xla", "cudnn", "splash", "chunked"), default="auto",
                        help="inference jobs: attention kernel (auto: cudnn on NVIDIA, splash on TPU)")
  planning.add_argument("--mesh", required=True,
                        help="axis sizes per slice / node, e.g. data=8,fsdp=8 (axes: data, fsdp, context, tensor)")
  planning.add_argument("--dcn", default="", help="axis sizes across slices / nodes (hybrid mesh), e.g. data=4")
  planning.add_argument("--model", choices=["lalrm", "vae", "camera-dit"], default=None,
                        help="which model the config trains (default: from the config's sections)")
  planning.add_argument("--target", default="cpu", help="what to compile for: " + TARGETS_HELP + "; accelerator "
                        "targets compile deviceless with that chip's compiler (the tpu / gpu extra)")
  planning.add_argument("--accelerator", default=None, help="device for the memory check and step time (default: "
                        "the --target's chip, h100 for cpu): "
                        "h100, h200, a100, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e")
  planning.add_argument("--mfu", type=flags.fraction, default=0.4, help="model FLOPs utilisation for the step time")
  planning.add_argument("--json", default=None, help="also write the plan as JSON to this file")
  planning.add_argument("--extrapolate", default="", metavar="N,M",
                        help="compile N- and M-block versions of the model and extend the figures linearly to the "
                             "config's depth (minutes instead of the tens a 42-block CPU compile takes)")
  planning.set_defaults(run=_plan, accepts_overrides=True)

  latents = commands.add_parser(
      "prepare-latents", help="encode training clips once with the frozen VAE into a latent cache (ArrayRecord "
                              "shards + index.json) that `wonderland train` streams")
  latents.add_argument("--config", required=True, help="the training config: its data.* says which clips "
                                                       "(synthetic, or --config.data.source=scenes with "
                                                       "--config.data.format/--config.data.root), its vae.* the VAE")
  latents.add_argument("--out", required=True, help="the cache directory (must not exist unless --overwrite)")
  latents.add_argument("--num-clips", type=flags.positive_int, required=True,
                       help="clips to write (scenes are visited in a seeded order, once per pass)")
  latents.add_argument("--shard-size", type=flags.positive_int, default=256, help="clips per shard")
  latents.add_argument("--batch-size", type=flags.positive_int, default=1, help="clips per VAE call")
  latents.add_argument("--seed", type=int, default=0, help="scene order and clip sampling")
  latents.add_argument("--image-codec", choices=("png", "raw"), default="png", help="how target images are stored")
  latents.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
  latents.set_defaults(run=_prepare_latents, accepts_overrides=True)

  made = commands.add_parser(
      "generate-latents", help="a generated-latent dataset for LaLRM training (the paper's stage 2): the "
                               "camera-guided model sampled on image prompts along camera paths cut from a posed "
                               "dataset; writes a latent cache (latents, cameras, decoded frames as supervision, "
                               "prompts, seeds); resumable, split over processes by sample index")
  made.add_argument("--model", default=None, help="directory made by `wonderland convert cogvideox`")
  made.add_argument("--branch", default=None, help="the camera branch (`<workdir>/model` of `wonderland train "
                                                   "camera-dit`)")
  made.add_argument("--images", default=None, help="folder of image prompts (PNG / JPEG; `<stem>.txt` beside an "
                                                   "image is its text prompt); resized and centre-cropped to --size")
  made.add_argument("--poses", default=None, help="RealEstate10K-layout folder (poses/*.txt) the camera paths are "
                                                  "cut from")
  made.add_argument("--pair-by-name", action="store_true",
                    help="use the image named like the drawn pose file (a scene's first frame with its own path) "
                         "instead of a random image")
  made.add_argument("--num", type=flags.positive_int, default=None, help="samples in the dataset")
  made.add_argument("--out", required=True, help="the dataset folder (a latent cache once every sample exists)")
  made.add_argument("--frames", type=flags.positive_int, default=DEFAULT_VIDEO_FRAMES,
                    help="video frames, 1 + 4k (default 49)")
  made.add_argument("--size", type=flags.size, default=None, help="WIDTHxHEIGHT (default: the model's)")
  made.add_argument("--stride", type=_stride, default=None,
                    help="source-frame stride N or MIN,MAX of the camera paths (default: RealEstate10K's 3,5)")
  made.add_argument("--target-views", type=flags.positive_int, default=8,
                    help="decoded frames kept per sample as supervision views (the LaLRM config's "
                         "num_target_seen + num_target_unseen; default 8)")
  made.add_argument("--prompt", default="", help="text prompt of images without a .txt sidecar (default empty)")
  made.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
  made.add_argument("--steps", type=flags.positive_int, default=50, help="sampling steps (default 50)")
  made.add_argument("--guidance", type=flags.finite, default=6.0,
                    help="classifier-free guidance scale (1 = off; default 6)")
  made.add_argument("--seed", type=int, default=0, help="the dataset's seed: sample i draws from (seed, i) "
                                                        "(default 0)")
  made.add_argument("--image-codec", choices=("png", "raw"), default="png",
                    help="how decoded frames are stored (default png)")
  made.add_argument("--merge-lora", action="store_true", help="fold the branch's LoRA adapters into the base")
  made.add_argument("--process-index", type=int, default=None,
                    help="this process's share: samples i with i %% count == index (default: $SLURM_PROCID or 0)")
  made.add_argument("--process-count", type=flags.positive_int, default=None,
                    help="processes sharing the dataset (default: $SLURM_NTASKS or 1)")
  made.add_argument("--pack-only", action="store_true",
                    help="only pack the finished samples into the cache (after a run killed while packing)")
  compute.add_flags(made)
  made.set_defaults(run=_generate_latents)

  recon = commands.add_parser("reconstruct", help="a video and its cameras -> a 3D Gaussian scene (.ply) with a "
                                                  "trained LaLRM")
  recon.add_argument("--lalrm", "--model", dest="model", required=True,
                     help="a trained LaLRM (<workdir>/model), as `generate --lalrm` (--model: the old name)")
  recon.add_argument("--vae", default=None, help="the VAE it was trained with (default: <model>/../vae, else the "
                                                 "training config's vae.checkpoint)")
  recon.add_argument("--video", required=True, help="a video file or a directory of frames (1 + 4k frames)")
  recon.add_argument("--cameras", required=True, help="pose file, one camera per frame: RealEstate10K .txt, "
                                                      "nerfstudio transforms.json or a COLMAP model (text or binary)")
  recon.add_argument("--size", type=flags.size, default=None, help="resize frames to WIDTHxHEIGHT first")
  recon.add_argument("--out", required=True, help="output .ply")
  recon.add_argument("--render", default=None, help="also render the input camera path to this video")
  recon.add_argument("--fps", type=flags.positive, default=8.0, help="frame rate of --render")
  recon.set_defaults(run=_reconstruct)
  return parser


EXIT_PREEMPTED = 75  # saved and stopped for a SIGTERM: requeue the job (EX_TEMPFAIL; launch/ scripts do)
EXIT_INTERRUPTED = 130  # saved and stopped for Ctrl-C
MESSAGE_LINES = 2  # an error is at most this many lines (without -v)


class _DefaultsFormatter(argparse.HelpFormatter):
  """Help that shows each flag's default, unless its text already says it or there is none to show."""

  def _get_help_string(self, action):
    text = action.help or ""
    default = action.default
    nothing = default is None or default is False or default is argparse.SUPPRESS or default == ""
    if ("default" in text or nothing or not action.option_strings
        or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
      return text
    return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors: 'wonderland CMD: error: MESSAGE (see wonderland CMD --help)', exit 2; help
  shows the defaults."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _DefaultsFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _short(message: str, verbose: bool) -> str:
  lines = str(message).strip().splitlines() or [""]
  if verbose or len(lines) <= MESSAGE_LINES:
    return "\n".join(lines)
  return "\n".join(lines[:MESSAGE_LINES]) + f" ({len(lines) - MESSAGE_LINES} more lines with -v)"


def _quiet_libraries(verbose: bool) -> None:
  """Our logger at INFO (DEBUG with -v); the libraries' chatter (absl / Orbax's tracebacks of a failure we
  report ourselves, imageio, jax) only with -v."""
  # absl (imported by orbax) calls logging.basicConfig() on its first log line, leaving a plain stderr handler
  # on the root logger that would make ours a no-op; replace that one (and only plain ones: test capture and
  # user handlers stay).
  root = logging.getLogger()
  for handler in list(root.handlers):
    if type(handler) is logging.StreamHandler:
      root.removeHandler(handler)
  logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[wonderland] %(message)s",
                      stream=sys.stderr)
  for noisy in ("jax", "absl", "imageio", "imageio_ffmpeg", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.CRITICAL)
  logging.getLogger("wonderland_jax").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
  """Runs one command; returns the exit status: 0 done, 2 an error the user can fix (one line), 75 preempted
  (saved; rerun to resume), 130 interrupted (saved)."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(args, "accepts_overrides", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  args.overrides = extra
  args.argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_libraries(args.verbose)
  try:
    status = args.run(args)
  except WonderlandError as err:
    print(f"wonderland {args.command}: error: {_short(err, args.verbose)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"wonderland {args.command}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
  return status or 0


if __name__ == "__main__":
  sys.exit(main())
