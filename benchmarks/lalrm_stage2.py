"""The paper's Table A3 effect on the demo models: does fine-tuning the LaLRM on latents the video model generated
(stage 2) reconstruct generated latents better than fine-tuning on real latents only?

    python benchmarks/lalrm_stage2.py --workdir /tmp/stage2 [--weights wonderland_jax/demo/weights] \
        [--train-scenes 48 --generated 192 --held-out 32 --steps 300]

1. Synthetic scenes in RealEstate10K layout: training scenes (seed 0, the models' training seed) and held-out
   ones (seed 1); each scene's first frame is its image prompt.
2. Latent caches: real clips of both (`prepare_latents` with the demo VAE: posterior means), and generated samples
   of both (`generate_latents` with the demo's camera-guided model along each scene's own path,
   `pair_by_name`; decoded frames as supervision).
3. From the demo LaLRM, the same number of steps on (a) the real cache only, (b) the mixture real + generated
   (equal weights, `data.sources`).
4. PSNR / SSIM of the renders at the supervision views of the held-out generated samples (against the decoded
   frames) and of the held-out real clips (against the true frames), for the demo LaLRM, (a) and (b).

Writes `<workdir>/results.json` and prints a markdown table (docs/lalrm.md, "Stage 2 on generated latents").
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _scenes(root: Path, num_scenes: int, seed: int) -> None:
  from wonderland_jax.data.synthetic import write_synthetic_dataset  # noqa: PLC0415
  from wonderland_jax.io_utils import read_image, write_png  # noqa: PLC0415
  if not (root / "poses").is_dir():
    write_synthetic_dataset(root, num_scenes, seed=seed, height=32, width=32, num_frames=24,
                            background=(0.0, 0.0, 0.0))
  images = root / "images"
  if not images.is_dir():
    images.mkdir()
    for pose_file in sorted((root / "poses").glob("*.txt")):
      first = sorted((root / "frames" / pose_file.stem).glob("*.png"))[0]
      write_png(images / f"{pose_file.stem}.png", read_image(first))


def _real_cache(scenes: Path, out: Path, vae, num_clips: int, seed: int) -> None:
  from wonderland_jax.data.latent_writer import prepare_latents  # noqa: PLC0415
  if not (out / "index.json").is_file():
    spec = {"source": "realestate10k", "root": str(scenes), "num_frames": 9, "height": 32, "width": 32,
            "stride": (1, 2), "num_target_seen": 2, "num_target_unseen": 2}
    prepare_latents(spec, vae, out, num_clips=num_clips, seed=seed, batch_size=4, overwrite=True)


def _generated_cache(pipe, scenes: Path, out: Path, weights: Path, num: int, seed: int, steps: int) -> None:
  from wonderland_jax.data import generated  # noqa: PLC0415
  settings = generated.GenerationSettings(
      num_samples=num, num_frames=9, height=32, width=32, num_target_views=4, stride=(1, 2), seed=seed, prompt="",
      negative_prompt="", num_inference_steps=steps, guidance_scale=1.0, model=str(weights / "pipeline"),
      branch=str(weights / "branch"), images=str(scenes / "images"), poses=str(scenes), pair_by_name=True)
  if not (out / "index.json").is_file():
    generated.generate_latents(pipe, settings, out)


def _finetune(workdir: Path, init: Path, sources: dict, steps: int, learning_rate: float, seed: int) -> Path:
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  from wonderland_jax.train.loop import train  # noqa: PLC0415
  from wonderland_jax.train.tasks import make_task  # noqa: PLC0415
  if (workdir / "model").is_dir():
    return workdir / "model"
  config = load_config("lalrm_tiny")
  with config.unlocked():
    config.init_from = str(init)
    config.seed = seed
    config.data.shuffle_seed = seed
    config.data.encode_frames = False
    config.data.root = None
    config.data.sources = sources
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = max(steps // 4, 1)
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = 20
  result = train(make_task("lalrm", config), config, workdir)
  if result.status != "finished":
    raise SystemExit(f"training in {workdir} stopped ({result.status}); run again to resume")
  return workdir / "model"


def _held_out(cache_dir: Path) -> dict:
  import numpy as np  # noqa: PLC0415

  from wonderland_jax.data import LatentCache  # noqa: PLC0415
  cache = LatentCache(cache_dir)
  records = []
  for index in range(len(cache)):
    record = cache[index]
    for key in ("latents_std", "prompt", "seed"):
      record.pop(key, None)
    records.append(record)
  return {key: np.stack([record[key] for record in records]) for key in records[0]}


def _evaluate(model_dir: Path, held_out: dict) -> dict:
  from wonderland_jax import checkpoints  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  from wonderland_jax.train.lalrm import evaluate_reconstruction  # noqa: PLC0415
  config = load_config("lalrm_tiny")
  lalrm = checkpoints.load(model_dir, kind="lalrm")
  results = {}
  for name, batch in held_out.items():
    scalars, _ = evaluate_reconstruction(lalrm, None, batch, config)
    results[name] = {"psnr": scalars["psnr"], "ssim": scalars["ssim"]}
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="scenes, caches, runs and results.json (reruns resume)")
  parser.add_argument("--weights", default=str(REPO / "wonderland_jax" / "demo" / "weights"),
                      help="pipeline/, branch/ and lalrm/ (default: the demo's)")
  parser.add_argument("--train-scenes", type=int, default=48, help="training scenes (seed 0; default 48)")
  parser.add_argument("--held-out-scenes", type=int, default=16, help="held-out scenes (seed 1; default 16)")
  parser.add_argument("--generated", type=int, default=192, help="generated training samples (default 192)")
  parser.add_argument("--held-out", type=int, default=32, help="held-out samples of each kind (default 32)")
  parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of each run (default 300)")
  parser.add_argument("--learning-rate", type=float, default=5e-4, help="fine-tuning peak learning rate")
  parser.add_argument("--seeds", default="0", help="fine-tuning seeds, comma-separated (default 0): the table "
                      "has each run and, with several, their mean")
  parser.add_argument("--sampling-steps", type=int, default=25, help="video sampling steps (the demo's 25)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="[stage2] %(message)s")
  for noisy in ("jax", "absl", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline  # noqa: PLC0415

  work, weights = Path(args.workdir), Path(args.weights)
  work.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  _scenes(work / "scenes_train", args.train_scenes, 0)
  _scenes(work / "scenes_held_out", args.held_out_scenes, 1)
  pipe = CameraVideoPipeline.load(weights / "pipeline", weights / "branch")
  vae = pipe.pipeline.vae
  _real_cache(work / "scenes_train", work / "real_train", vae, args.generated, 0)
  _real_cache(work / "scenes_held_out", work / "real_held_out", vae, args.held_out, 1)
  _generated_cache(pipe, work / "scenes_train", work / "generated_train", weights, args.generated, 0,
                   args.sampling_steps)
  _generated_cache(pipe, work / "scenes_held_out", work / "generated_held_out", weights, args.held_out, 1,
                   args.sampling_steps)
  data_seconds = time.perf_counter() - started

  real = {"real": {"source": "latents", "root": str(work / "real_train"), "eval_root": str(work / "real_held_out"),
                   "weight": 1.0}}
  mixed = real | {"generated": {"source": "latents", "root": str(work / "generated_train"),
                                "eval_root": str(work / "generated_held_out"), "weight": 1.0}}
  runs = {"demo LaLRM (no fine-tuning)": weights / "lalrm"}
  seeds = [int(seed) for seed in args.seeds.split(",")]
  for seed in seeds:
    suffix = "" if seed == 0 else f"_seed{seed}"  # seed 0 keeps the first run's folders
    runs[f"fine-tuned on real latents, seed {seed}"] = _finetune(
        work / f"run_real{suffix}", weights / "lalrm", real, args.steps, args.learning_rate, seed)
    runs[f"fine-tuned on real + generated, seed {seed}"] = _finetune(
        work / f"run_mixed{suffix}", weights / "lalrm", mixed, args.steps, args.learning_rate, seed)
  held_out = {"generated": _held_out(work / "generated_held_out"), "real": _held_out(work / "real_held_out")}
  results = {name: _evaluate(model, held_out) for name, model in runs.items()}
  if len(seeds) > 1:
    for kind in ("real latents", "real + generated"):
      rows = [row for name, row in results.items() if name.startswith(f"fine-tuned on {kind},")]
      results[f"fine-tuned on {kind}, mean of {len(seeds)} seeds"] = {
        split: {metric: sum(row[split][metric] for row in rows) / len(rows) for metric in ("psnr", "ssim")}
        for split in ("generated", "real")}
  report = {"results": results, "args": vars(args), "data_seconds": data_seconds,
            "total_seconds": time.perf_counter() - started}
  (work / "results.json.tmp").write_text(json.dumps(report, indent=2) + "\n")
  shutil.move(work / "results.json.tmp", work / "results.json")
  print("| LaLRM | held-out generated PSNR (dB) | SSIM | held-out real PSNR (dB) | SSIM |")
  print("|---|---:|---:|---:|---:|")
  for name, row in results.items():
    print(f"| {name} | {row['generated']['psnr']:.2f} | {row['generated']['ssim']:.3f} | {row['real']['psnr']:.2f} "
          f"| {row['real']['ssim']:.3f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
