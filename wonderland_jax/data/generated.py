"""Generated-latent datasets (`wonderland generate-latents`): the camera-guided video model sampled on image
prompts along camera paths drawn from a posed dataset, written as a latent cache for LaLRM training (the
paper's stage 2: latents the video model generated, with its decoded frames as the supervision views).

    generate_latents(pipe, images="prompts/", poses="re10k/train", out="cache/generated", num_samples=20000,
                     num_frames=49, seed=0)

Sample i (of `num_samples`) is fully determined by (seed, i): its Generator `np.random.default_rng([seed, i])`
picks the image prompt, the pose file, the stride and start of the camera path, the supervision views and the
sampling seed (recorded in the record as `seed`: `jax.random.key(seed)` reproduces it). With `pair_by_name`
the image is the one named like the pose file (`poses/<scene>.txt` and `images/<scene>.png`: a scene's own first
frame with its own path) instead of a drawn one. The text prompt is the
image's sidecar `<image stem>.txt` when there is one, else `prompt`; it is recorded as `prompt`.

Resumable, and split over processes by index: process p of P generates the samples i with i % P == p. Each
sample is written whole or not at all (`samples/sample-{i:07d}.npz`: a temporary name, then a rename), so a
killed run loses at most the sample in flight and a rerun of the same command skips the samples on disk. The
settings are fixed in `generation.json` on the first run; a rerun with other settings is refused. When every
sample exists, the run that sees it packs them into the cache's ArrayRecord shards and writes `index.json` last
(`latents.kind` 'generated'), after which `LatentCache(out)` (`--config.data.source=latents`) reads it. Packing
again (`pack_generated`, `--pack-only`) is harmless.

A record (`latent_cache` format): `latents` (T, h, w, C), the sampled latents in the scaled latent space (the
LaLRM's input, as `encode_frames` gives for real clips); `viewmats` / `intrinsics` (F, ...), the conditioning
cameras re-based on the first and normalised as the camera branch normalises them; `target_images` (V, H, W, 3)
the decoded frames at `target_indices` with their cameras (all `target_is_seen`: a generated video has no frame
outside it); `frame_indices`, the pose file's frames the path was cut from; `scene_index`, the pose file's index
(sorted by name); `pose_scale`; `prompt`; `seed`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from wonderland_jax.camera.io import read_realestate10k
from wonderland_jax.camera.poses import normalize_poses
from wonderland_jax.data.clips import DEFAULT_STRIDES, ClipSpec, sample_indices
from wonderland_jax.data.latent_cache import CACHE_FORMAT, CACHE_VERSION, INDEX_FILE, LatentCache
from wonderland_jax.data.latent_writer import _ShardWriter, encode_record
from wonderland_jax.diffusion.pipeline import resize_image
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import read_image, write_json
from wonderland_jax.progress import progress as show_progress

logger = logging.getLogger(__name__)

SETTINGS_FILE = "generation.json"
SAMPLES_DIR = "samples"
PACK_LOCK = ".packing"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SAMPLE_NAME = re.compile(r"sample-(\d{7})\.npz")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """What a generated dataset is made with (`generation.json`; a rerun must match)."""

  num_samples: int
  num_frames: int
  height: int
  width: int
  num_target_views: int
  stride: tuple[int, int]
  seed: int
  prompt: str
  negative_prompt: str
  num_inference_steps: int
  guidance_scale: float
  model: str
  branch: str
  images: str
  poses: str
  image_codec: str = "png"
  pair_by_name: bool = False

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self) | {"stride": list(self.stride)}


def image_prompts(directory) -> list[tuple[Path, str | None]]:
  """The images of `directory` (PNG / JPEG, sorted by name) with their sidecar prompts (`<stem>.txt`) or None."""
  directory = Path(directory)
  if not directory.is_dir():
    raise InputFileError(f"--images {directory}: no such folder")
  images = sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
  if not images:
    raise InputFileError(f"--images {directory}: no .png / .jpg images")
  prompts = []
  for image in images:
    sidecar = image.with_suffix(".txt")
    prompts.append((image, sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None))
  return prompts


def pose_files(root) -> list[Path]:
  """The RealEstate10K pose files of a dataset folder: `root/poses/*.txt`, else `root/*.txt` (sorted)."""
  root = Path(root)
  if not root.is_dir():
    raise InputFileError(f"--poses {root}: no such folder")
  folder = root / "poses" if (root / "poses").is_dir() else root
  files = sorted(folder.glob("*.txt"))
  if not files:
    raise InputFileError(f"--poses {root}: no RealEstate10K pose files (poses/*.txt or *.txt)")
  return files


def sample_plan(settings: GenerationSettings, index: int, num_images: int, num_pose_files: int) -> dict[str, Any]:
  """Sample `index`'s choices, from np.random.default_rng([seed, index]) only: image, pose file, sampling seed,
  and the Generator left to cut the camera path. (With pair_by_name the image drawn here is replaced by the
  pose file's own.)"""
  rng = np.random.default_rng([settings.seed, index])
  return {"image": int(rng.integers(num_images)), "pose_file": int(rng.integers(num_pose_files)),
          "seed": int(rng.integers(2 ** 31 - 1)), "rng": rng}


def paired_images(images: list, poses: list[Path]) -> list:
  """The image prompts in pose-file order, matched by stem (`pair_by_name`); a pose file without one is an
  error naming it."""
  by_stem = {path.stem: (path, prompt) for path, prompt in images}
  missing = [path for path in poses if path.stem not in by_stem]
  if missing:
    raise InputFileError(f"--pair-by-name: no image named {missing[0].stem}.png/.jpg for {missing[0]} "
                         f"({len(missing)} pose files without one)")
  return [by_stem[path.stem] for path in poses]


def generate_latents(pipe, settings: GenerationSettings, out, *, process_index: int = 0, process_count: int = 1,
                     progress: bool = True) -> LatentCache | None:
  """Generates this process's missing samples of `settings` into `out`; packs the cache when all exist.

  pipe: a `CameraVideoPipeline` (its default size should be settings' height x width). Returns the packed cache,
  or None while other processes' samples are still missing.
  """
  out = Path(out)
  if not 0 <= process_index < process_count:
    raise WonderlandError(f"--process-index must be in [0, --process-count={process_count}), got {process_index}")
  pipe.pipeline.check(settings.num_frames, settings.height, settings.width)
  images = image_prompts(settings.images)
  poses = pose_files(settings.poses)
  if settings.pair_by_name:
    paired_images(images, poses)  # every pose file has its image, before anything is written
  _claim(out, settings)
  samples = out / SAMPLES_DIR
  samples.mkdir(exist_ok=True)
  todo = [index for index in range(process_index, settings.num_samples, process_count)
          if not (samples / _sample_name(index)).is_file()]
  logger.info("generate-latents: %d of this process's %d samples to make (%d done before)", len(todo),
              len(range(process_index, settings.num_samples, process_count)),
              len(range(process_index, settings.num_samples, process_count)) - len(todo))
  loaded: dict[int, Any] = {}
  for index in (show_progress(todo, desc="generating", total=len(todo)) if progress else todo):
    record = make_sample(pipe, settings, index, images, poses, loaded)
    _write_whole(samples / _sample_name(index), encode_record(record, settings.image_codec))
  present = {int(match.group(1)) for path in samples.iterdir() if (match := _SAMPLE_NAME.fullmatch(path.name))}
  missing = settings.num_samples - len(present & set(range(settings.num_samples)))
  if missing:
    logger.info("generate-latents: %d samples of other processes still missing; the run that finishes last packs "
                "the cache (or rerun with --pack-only)", missing)
    return None
  try:  # one packer, whichever processes finish together
    os.close(os.open(out / PACK_LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    logger.info("generate-latents: another process is packing %s (or one was killed packing: --pack-only)", out)
    return None
  try:
    return pack_generated(out)
  finally:
    (out / PACK_LOCK).unlink(missing_ok=True)


def make_sample(pipe, settings: GenerationSettings, index: int, images: list, poses: list[Path],
                loaded: dict | None = None) -> dict[str, np.ndarray]:
  """Sample `index` (`sample_plan`) generated with `pipe`: a record of the `latent_cache` format."""
  loaded = {} if loaded is None else loaded
  plan = sample_plan(settings, index, len(images), len(poses))
  pose_path = poses[plan["pose_file"]]
  if pose_path not in loaded:
    loaded[pose_path] = read_realestate10k(pose_path, settings.width, settings.height)
  sequence = loaded[pose_path]
  spec = ClipSpec(num_frames=settings.num_frames, height=settings.height, width=settings.width,
                  stride=settings.stride, num_target_seen=0, num_target_unseen=0)
  frame_indices = sample_indices(len(sequence.cameras), spec, plan["rng"], settings.stride,
                                 where=str(pose_path)).frame_indices
  cameras = sequence.cameras[frame_indices]
  image_path, image_prompt = (paired_images(images, poses)[plan["pose_file"]] if settings.pair_by_name
                              else images[plan["image"]])
  image = resize_image(read_image(image_path), settings.height, settings.width)
  prompt = settings.prompt if image_prompt is None else image_prompt
  unscaled, frames = pipe.generate(image, prompt, cameras, negative_prompt=settings.negative_prompt,
                                   num_inference_steps=settings.num_inference_steps,
                                   guidance_scale=settings.guidance_scale, key=jax.random.key(plan["seed"]))
  latents = np.asarray(pipe.pipeline.vae.config.scale_latents(unscaled))[0].astype(np.float32)
  views = plan["rng"].choice(settings.num_frames, settings.num_target_views,
                             replace=settings.num_target_views > settings.num_frames)
  views = np.sort(views)
  viewmats, scale = normalize_poses(np.asarray(cameras.viewmat), settings.num_frames, pipe.scale_mode,
                                    pipe.scale_target, *_floor(pipe))
  intrinsics = np.asarray(cameras.K, np.float32)
  return {"latents": latents, "viewmats": viewmats.astype(np.float32), "intrinsics": intrinsics,
          "target_images": np.asarray(frames, np.float32)[views], "target_viewmats": viewmats[views].astype(np.float32),
          "target_intrinsics": intrinsics[views], "target_is_seen": np.ones(len(views), bool),
          "frame_indices": np.asarray(frame_indices, np.int32),
          "target_indices": np.asarray(frame_indices, np.int32)[views], "pose_scale": np.float32(scale),
          "scene_index": np.int32(plan["pose_file"]), "prompt": np.asarray(prompt), "seed": np.int64(plan["seed"])}


def _floor(pipe) -> tuple:
  """The camera branch's normalisation floor, for pipelines that carry one."""
  return (pipe.scale_floor,) if getattr(pipe, "scale_floor", None) is not None else ()


def pack_generated(out) -> LatentCache:
  """Packs a generated dataset's samples (all of them must exist) into ArrayRecord shards + index.json."""
  out = Path(out)
  settings = _read_settings(out)
  samples = out / SAMPLES_DIR
  missing = [index for index in range(settings["num_samples"]) if not (samples / _sample_name(index)).is_file()]
  if missing:
    raise InputFileError(f"{out}: {len(missing)} of {settings['num_samples']} samples missing (first: "
                         f"{_sample_name(missing[0])}); run generate-latents until every process has finished")
  (out / INDEX_FILE).unlink(missing_ok=True)  # a repack: the shards below are rewritten first
  shard_size = 256
  writer = _ShardWriter(out, settings["num_samples"], shard_size)
  shapes: dict[str, list] = {}
  for index in range(settings["num_samples"]):
    data = (samples / _sample_name(index)).read_bytes()
    if not shapes:
      with np.load(samples / _sample_name(index), allow_pickle=False) as npz:
        shapes = {key: [list(npz[key].shape), str(npz[key].dtype)] for key in npz.files}
    writer.write(data)
  writer.close()
  write_json(out / (INDEX_FILE + ".tmp"), {
    "format": CACHE_FORMAT, "version": CACHE_VERSION, "num_records": writer.count, "shards": writer.shards,
    "image_codec": settings["image_codec"], "shapes": shapes,
    "latents": {"kind": "generated", "std": False},
    "clip_spec": {"num_frames": settings["num_frames"], "height": settings["height"], "width": settings["width"],
                  "num_target_views": settings["num_target_views"], "stride": settings["stride"]},
    "dataset_spec": {"generated": settings}, "seed": settings["seed"], "num_skipped": 0})
  os.replace(out / (INDEX_FILE + ".tmp"), out / INDEX_FILE)
  logger.info("generate-latents: packed %d samples into %d shards in %s", writer.count, len(writer.shards), out)
  return LatentCache(out)


def _sample_name(index: int) -> str:
  return f"sample-{index:07d}.npz"


def _write_whole(path: Path, data: bytes) -> None:
  """Writes `data` to `path` under a temporary name in the same folder, then renames it (whole or not at all)."""
  handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  try:
    with os.fdopen(handle, "wb") as file:
      file.write(data)
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def _read_settings(out: Path) -> dict[str, Any]:
  path = out / SETTINGS_FILE
  if not path.is_file():
    raise InputFileError(f"{out}: not a generated dataset (no {SETTINGS_FILE})")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise InputFileError(f"{path}: cannot read: {err}") from err


def _claim(out: Path, settings: GenerationSettings) -> None:
  """Creates `out` with generation.json, or checks that an existing one holds the same settings."""
  wanted = settings.to_json()
  if (out / SETTINGS_FILE).is_file():
    stored = _read_settings(out)
    changed = sorted(key for key in wanted if stored.get(key) != wanted[key])
    if changed:
      differences = "; ".join(f"{key}: {stored.get(key)!r} there, {wanted[key]!r} now" for key in changed[:3])
      raise WonderlandError(f"{out}: made with other settings ({differences}); use a new --out for another dataset")
    return
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise WonderlandError(f"--out {out}: exists and is not a generated dataset; give a new or empty folder")
  out.mkdir(parents=True, exist_ok=True)
  _write_whole(out / SETTINGS_FILE, (json.dumps(wanted, indent=2) + "\n").encode())


def default_stride(stride) -> tuple[int, int]:
  """--stride: None -> RealEstate10K's default range."""
  return tuple(stride) if stride else DEFAULT_STRIDES["realestate10k"]
