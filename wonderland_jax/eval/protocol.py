"""The paper's evaluation protocols: camera-guided video generation (Table 1) and 3D scene generation (Table 2).

    wonderland eval video --data re10k/test --format realestate10k --num 300 --model ... --branch ... --out ev/
    wonderland eval scene --data dl3dv140 --format dl3dv --num 300 --model ... --branch ... --lalrm ... --out es/

Sampling (the paper's appendix): `num` clips, at most one per scene, from scenes drawn at random (seeded) among
those long enough; in each, a random start frame and the next F - 1 frames at `stride` (F = the video length,
49 for CogVideoX-5B-I2V). The start frame is the image condition, the F cameras the pose condition; frames and
intrinsics are resized to cover the video size and centre-cropped (`data.clips.resize_and_crop`).

Per clip (`<out>/clips/<clip id>/`, written whole; a rerun skips finished clips, so a killed run resumes):
  video  generated.mp4, frames/frame_00000.png ... (COLMAP's input), reference.mp4, cameras.txt (RealEstate10K
         format), record.json (PSNR / SSIM / LPIPS over the first 14 frames), features.npz (Inception pool
         features of every generated and reference frame, I3D features of both videos);
  scene  renders.mp4 (the scene rendered at the first 14 cameras), reference.mp4, record.json.

The table (`<out>/results.md`, `<out>/results.json`; after each clip with the running means, FID and FVD at the
end) has the paper's columns:
  video  FID (all frames, generated vs reference) | FVD (generated vs reference videos) | RotErr | TransErr
         (mean over the first 16 frames of the poses COLMAP estimated from frames/, read from
         `<colmap root>/<clip id>/`, see `camera_metrics`) | LPIPS | PSNR | SSIM;
  scene  LPIPS | PSNR | SSIM of the renders at the first 14 cameras against the ground-truth frames.
A column whose network weights (or COLMAP models) were not given is '-'. COLMAP is run outside: after a first
pass, run it on each `clips/<id>/frames`, then rerun the same command with `--colmap` (nothing is regenerated).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.io import PoseSequence, read_realestate10k, write_realestate10k
from wonderland_jax.data.clips import resize_and_crop
from wonderland_jax.data.scenes import DatasetScan, Scene
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.eval.camera_metrics import CAMERA_ERROR_FRAMES, camera_errors, colmap_trajectory
from wonderland_jax.eval.frechet import FeatureStatistics, frechet_distance
from wonderland_jax.eval.image_metrics import psnr, ssim
from wonderland_jax.io_utils import atomic_directory, atomic_path, write_json, write_png_sequence, write_video
from wonderland_jax.progress import progress

logger = logging.getLogger("wonderland_jax")

SIMILARITY_FRAMES = 14  # PSNR / SSIM / LPIPS on the first 14 frames (views), as in the paper
# Clip strides (source frames between generated frames) by dataset format. The paper gives one per dataset, but
# its values did not survive in the text we have: these make a 49-frame clip span a few seconds of RE10K / ACID
# video (30 fps) and consecutive DL3DV / Tanks and Temples keyframes. Pass --stride to choose.
EVAL_STRIDES = {"realestate10k": 3, "acid": 3, "dl3dv": 1, "colmap": 1}
VIDEO_COLUMNS = ("FID", "FVD", "RotErr", "TransErr", "LPIPS", "PSNR", "SSIM")
SCENE_COLUMNS = ("LPIPS", "PSNR", "SSIM")


@dataclasses.dataclass(frozen=True)
class EvalClip:
  """One evaluation sample: `indices` (F source frames) of scene `scene`; `id` names its output folder."""

  number: int
  scene: str
  indices: tuple[int, ...]

  @property
  def id(self) -> str:
    return f"{self.number:04d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", self.scene)


def sample_clips(scan: DatasetScan, num: int, num_frames: int, stride: int, seed: int = 0) -> list[EvalClip]:
  """Up to `num` clips, one per scene, from the scenes of `scan` in a seeded random order (see module docstring);
  scenes shorter than (num_frames - 1) * stride + 1 frames, or unreadable, are skipped with a log line."""
  if num < 1 or num_frames < 1 or stride < 1:
    raise WonderlandError(f"--num {num}, --frames {num_frames}, --stride {stride}: all must be positive")
  span = (num_frames - 1) * stride + 1
  rng = np.random.default_rng(seed)
  clips, too_short = [], 0
  for position in rng.permutation(len(scan.scenes)):
    ref = scan.scenes[int(position)]
    try:
      length = len(ref.load())
    except WonderlandError as err:
      logger.warning("eval: skipping %s: %s", ref.name, err)
      continue
    if length < span:
      too_short += 1
      continue
    start = int(rng.integers(0, length - span + 1))
    clips.append(EvalClip(len(clips), ref.name, tuple(range(start, start + span, stride))))
    if len(clips) == num:
      break
  if not clips:
    raise InputFileError(f"{scan.root}: no scene has the {span} frames a clip of {num_frames} frames at stride "
                         f"{stride} needs ({too_short} too short)")
  if len(clips) < num:
    logger.warning("eval: %d clips, fewer than --num %d (%d scenes too short for %d frames at stride %d)",
                   len(clips), num, too_short, num_frames, stride)
  return clips


def clip_inputs(scene: Scene, clip: EvalClip, height: int, width: int) -> tuple[np.ndarray, Camera]:
  """The clip's reference frames (F, height, width, 3) in [0, 1] and their cameras at that size."""
  indices = list(clip.indices)
  frames, intrinsics = resize_and_crop(scene.load_frames(indices), scene.intrinsics[indices], height, width)
  cameras = Camera.from_viewmat(np.asarray(scene.viewmats[indices], np.float32), intrinsics.astype(np.float32),
                                width, height)
  return frames, cameras


# --------------------------------------------------------------------------------------- metric networks


def _jitted(model: nnx.Module) -> Callable:
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs))
  return lambda *inputs: np.asarray(forward(state, *(jnp.asarray(x, jnp.float32) for x in inputs)))


@dataclasses.dataclass
class MetricNetworks:
  """The learned metrics' networks, each None when its weights were not given (its column is then '-').

  lpips: (pred, target) (N, H, W, 3) -> (N,); inception: (N, H, W, 3) -> (N, 2048) FID features;
  i3d: (B, T, H, W, 3) -> (B, D) FVD features. Images in [0, 1]."""

  lpips: Callable | None = None
  inception: Callable | None = None
  i3d: Callable | None = None

  @classmethod
  def load(cls, *, lpips_vgg: str | None = None, lpips_heads: str | None = None, inception: str | None = None,
           i3d: str | None = None) -> MetricNetworks:
    """From weight files (see docs/eval.md for where they come from; nothing downloads)."""
    networks = cls()
    if (lpips_vgg is None) != (lpips_heads is None):
      raise WonderlandError("LPIPS needs both --lpips-vgg (torchvision vgg16) and --lpips-heads (lpips v0.1 vgg.pth)")
    if lpips_vgg is not None:
      from wonderland_jax.models.vgg import load_lpips  # noqa: PLC0415
      networks.lpips = _jitted(load_lpips(lpips_vgg, lpips_heads, "vgg"))
    if inception is not None:
      from wonderland_jax.eval.features import fid_features  # noqa: PLC0415
      from wonderland_jax.models.inception import load_fid_inception  # noqa: PLC0415
      inception_model = load_fid_inception(inception)
      networks.inception = lambda images: fid_features(inception_model, images, 16)
    if i3d is not None:
      from wonderland_jax.eval.features import fvd_features  # noqa: PLC0415
      from wonderland_jax.models.i3d import load_i3d  # noqa: PLC0415
      i3d_model = load_i3d(i3d)
      # Through uint8 (truncating), as the reference FVD code feeds its videos.
      networks.i3d = lambda videos: fvd_features(i3d_model, (np.clip(videos, 0, 1) * 255).astype(np.uint8),
                                                 batch_size=1)
    return networks


def _batched(function: Callable, inputs: np.ndarray, batch_size: int) -> np.ndarray:
  return np.concatenate([function(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)])


def similarity(networks: MetricNetworks, generated: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
  """PSNR, SSIM (and LPIPS when loaded) of (n, H, W, 3) frames against their references: per frame and mean."""
  generated = np.clip(np.asarray(generated, np.float32), 0.0, 1.0)
  reference = np.asarray(reference, np.float32)
  per_frame = {"psnr": np.asarray(psnr(generated, reference)), "ssim": np.asarray(ssim(generated, reference))}
  if networks.lpips is not None:
    per_frame["lpips"] = _batched(lambda x: networks.lpips(x[:, 0], x[:, 1]), np.stack([generated, reference], 1), 8)
  return {name: float(np.mean(values)) for name, values in per_frame.items()} | {
    "per_frame": {name: values.tolist() for name, values in per_frame.items()}}


# ----------------------------------------------------------------------------------------------- runs


# generate(clip, first frame (H, W, 3), the clip's F cameras) -> video: the (F, H, W, 3) generated frames; scene:
# the (14, H, W, 3) renders of the generated scene at the first 14 cameras, or (renders, entries added to the
# clip's record: e.g. the poses the scene was reconstructed with). Images in [0, 1].
Generate = Callable[[EvalClip, np.ndarray, Camera], np.ndarray | tuple[np.ndarray, dict]]


@dataclasses.dataclass
class EvalRun:
  """What an evaluation needs besides the model: the data, the clips and where to write."""

  kind: str  # 'video' | 'scene'
  scan: DatasetScan
  clips: list[EvalClip]
  out: Path
  networks: MetricNetworks
  height: int
  width: int
  label: str = ""
  colmap: Path | None = None
  settings: dict = dataclasses.field(default_factory=dict)
  fps: float = 8.0


def _scene_of(run: EvalRun, clip: EvalClip) -> Scene:
  for ref in run.scan.scenes:
    if ref.name == clip.scene:
      return ref.load()
  raise InputFileError(f"{run.scan.root}: scene {clip.scene!r} is gone")


def evaluate_video_clip(run: EvalRun, clip: EvalClip, generate: Generate,
                        staging: Path) -> dict:
  """Generates one clip's video, writes its files into `staging` and returns its record."""
  reference, cameras = clip_inputs(_scene_of(run, clip), clip, run.height, run.width)
  generated = np.clip(np.asarray(generate(clip, reference[0], cameras), np.float32), 0.0, 1.0)
  if generated.shape != reference.shape:
    raise WonderlandError(f"clip {clip.id}: generated video {generated.shape} vs reference {reference.shape}")
  write_video(staging / "generated.mp4", generated, fps=run.fps)
  write_video(staging / "reference.mp4", reference, fps=run.fps)
  write_png_sequence(staging / "frames", generated)
  write_realestate10k(staging / "cameras.txt", PoseSequence(cameras, [str(i) for i in clip.indices]))
  features = {}
  if run.networks.inception is not None:
    features["inception_generated"] = run.networks.inception(generated)
    features["inception_reference"] = run.networks.inception(reference)
  if run.networks.i3d is not None:
    features["i3d_generated"] = run.networks.i3d(generated[None])
    features["i3d_reference"] = run.networks.i3d(reference[None])
  np.savez(staging / "features.npz", **features)
  count = min(SIMILARITY_FRAMES, len(generated))
  return similarity(run.networks, generated[:count], reference[:count])


def evaluate_scene_clip(run: EvalRun, clip: EvalClip, generate: Generate,
                        staging: Path) -> dict:
  """Builds one clip's scene, renders it at the first 14 cameras, writes its files into `staging` and returns
  its record (with the entries `generate` returned beside the renders, e.g. the poses used)."""
  reference, cameras = clip_inputs(_scene_of(run, clip), clip, run.height, run.width)
  count = min(SIMILARITY_FRAMES, len(reference))
  renders, extra = generate(clip, reference[0], cameras), {}
  if isinstance(renders, tuple):
    renders, extra = renders
  renders = np.asarray(renders, np.float32)
  if renders.shape != reference[:count].shape:
    raise WonderlandError(f"clip {clip.id}: renders {renders.shape} vs reference views {reference[:count].shape}")
  write_video(staging / "renders.mp4", np.clip(renders, 0.0, 1.0), fps=run.fps)
  write_video(staging / "reference.mp4", reference[:count], fps=run.fps)
  return similarity(run.networks, renders, reference[:count]) | extra


def run_evaluation(run: EvalRun, generate: Generate) -> dict:
  """Evaluates every clip not yet done in `run.out/clips/`, then writes and returns the table row."""
  clip_evaluator = {"video": evaluate_video_clip, "scene": evaluate_scene_clip}[run.kind]
  clips_dir = run.out / "clips"
  clips_dir.mkdir(parents=True, exist_ok=True)
  write_json(run.out / "clips.json", {"clips": [dataclasses.asdict(clip) | {"id": clip.id} for clip in run.clips],
                                      "settings": run.settings})
  for clip in progress(run.clips, desc=f"eval {run.kind}"):
    directory = clips_dir / clip.id
    if (directory / "record.json").is_file():
      continue
    with atomic_directory(directory) as staging:
      record = clip_evaluator(run, clip, generate, staging)
      write_json(staging / "record.json", record | {"clip": dataclasses.asdict(clip)})
    write_table(run, frechet=False)  # progress: the per-clip means; FID / FVD once, at the end
  return write_table(run)


def _frechet(directories: list[Path], prefix: str) -> tuple[float | None, int]:
  """The Fréchet distance between the reference and generated features `<prefix>_*` of the clips' features.npz
  and how many generated vectors it used; (None, 0) when a clip lacks them or there are fewer than 2."""
  statistics: dict[str, FeatureStatistics] = {}
  for directory in directories:
    with np.load(directory / "features.npz") as features:
      if f"{prefix}_generated" not in features:
        return None, 0
      for side in ("generated", "reference"):
        values = features[f"{prefix}_{side}"]
        statistics.setdefault(side, FeatureStatistics(values.shape[-1])).add(values)
  if not statistics or statistics["generated"].count < 2:
    return None, 0
  distance = frechet_distance(statistics["reference"].result(), statistics["generated"].result())
  return distance, statistics["generated"].count


def write_table(run: EvalRun, frechet: bool = True) -> dict:
  """Aggregates the finished clips' records into `results.json` and `results.md`; returns the row. frechet=False
  leaves FID and FVD out (they read every clip's features: done once, when all clips are in)."""
  directories = [run.out / "clips" / clip.id for clip in run.clips
                 if (run.out / "clips" / clip.id / "record.json").is_file()]
  records = [json.loads((directory / "record.json").read_text()) for directory in directories]
  row: dict[str, Any] = {"dataset": run.label or run.scan.format, "clips": len(records),
                         "clips_planned": len(run.clips)}
  for name in ("lpips", "psnr", "ssim"):
    values = [record[name] for record in records if name in record]
    row[name.upper()] = float(np.mean(values)) if values else None
  if run.kind == "video":
    row["FID"], row["fid_frames"] = _frechet(directories, "inception") if frechet else (None, 0)
    row["FVD"], row["fvd_videos"] = _frechet(directories, "i3d") if frechet else (None, 0)
    row.update(_pose_errors(run, directories))
  columns = VIDEO_COLUMNS if run.kind == "video" else SCENE_COLUMNS
  result = {"kind": run.kind, "columns": list(columns), "row": row, "settings": run.settings}
  write_json(run.out / "results.json", result)
  with atomic_path(run.out / "results.md") as temporary:
    temporary.write_text(markdown_table(run.kind, [row]))
  return row


def _pose_errors(run: EvalRun, directories: list[Path]) -> dict:
  """Mean RotErr / TransErr over the clips with a COLMAP model under `run.colmap` (None without any)."""
  rotation, translation, failed = [], [], []
  if run.colmap is not None:
    for directory in directories:
      model = run.colmap / directory.name
      if not model.is_dir():
        continue
      record = json.loads((directory / "record.json").read_text())
      num_frames = len(record["clip"]["indices"])
      try:
        estimated = colmap_trajectory(model, num_frames)
        reference = read_reference_viewmats(directory / "cameras.txt", run.width, run.height)
        errors = camera_errors(estimated, reference, CAMERA_ERROR_FRAMES)
      except WonderlandError as err:
        logger.warning("eval: %s: %s", model, err)
        failed.append(directory.name)
        continue
      rotation.append(errors.rotation)
      translation.append(errors.translation)
  return {"RotErr": float(np.mean(rotation)) if rotation else None,
          "TransErr": float(np.mean(translation)) if translation else None,
          "posed_clips": len(rotation), "colmap_failed": failed}


def read_reference_viewmats(path: Path, width: int, height: int) -> np.ndarray:
  """A clip's conditioning cameras (its cameras.txt) as (F, 4, 4) float64 world->camera."""
  return np.asarray(read_realestate10k(path, width, height).cameras.viewmat, np.float64)


def _format(value: Any, digits: int) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


DIGITS = {"FID": 2, "FVD": 2, "RotErr": 3, "TransErr": 3, "LPIPS": 3, "PSNR": 2, "SSIM": 3}


def markdown_table(kind: str, rows: list[dict]) -> str:
  """The paper's table layout: Dataset | its columns | clips; '-' for a metric that was not computed."""
  columns = VIDEO_COLUMNS if kind == "video" else SCENE_COLUMNS
  lines = ["| Dataset | " + " | ".join(columns) + " | Clips |", "|---" * (len(columns) + 2) + "|"]
  for row in rows:
    cells = [_format(row.get(column), DIGITS[column]) for column in columns]
    lines.append(f"| {row['dataset']} | " + " | ".join(cells) + f" | {row['clips']} |")
  notes = []
  if kind == "video":
    notes.append("FID over all frames, FVD over whole videos (generated vs reference); RotErr (radians) and "
                 "TransErr (normalised units) averaged over the first 16 frames of COLMAP poses.")
  notes.append(f"LPIPS / PSNR / SSIM over the first {SIMILARITY_FRAMES} frames.")
  return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"
