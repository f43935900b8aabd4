"""Builds the weights `wonderland demo` ships: the demo's models, trained by the project's own commands.

    python -m wonderland_jax.demo.build --workdir runs/demo --out wonderland_jax/demo/weights [--recipe mini]

Run from a checkout (the configs are the repository's `configs/`). Two recipes (`RECIPES`): `mini` (issue 17:
17 frames at 64x64 from camera-path families, rendered once to disk) and `tiny` (9 frames at 32x32, rendered in
the steps; the weights shipped until the mini build lands). Stages, in order, each skipped when its output is
there (a rerun continues; every `wonderland train` also resumes by itself from its checkpoints):

  data        mini only: <workdir>/data/{train,eval}, the recipe's synthetic scenes in RealEstate10K layout
              (`data.synthetic.write_synthetic_dataset`; held-out scenes from the data config's eval_seed); every
              run below reads them (--config.data.source=scenes --config.data.root=... --config.data.eval_root=...)
  vae         wonderland train vae --config <recipe's VAE config> --workdir <vae-workdir>   (default <workdir>/vae)
  pipeline    <workdir>/pipeline: a tiny converted CogVideoX pipeline (`write_pipeline`): a random base
              transformer (the camera-DiT config's base.random_config), the trained VAE, a random tiny T5
              encoder and a sentencepiece tokenizer trained here on a few lines, the CogVideoX-5B-I2V scheduler
  camera_dit  wonderland train camera-dit --config <recipe's camera-DiT config> --workdir <workdir>/camera_dit
                  --config.base.pipeline=<workdir>/pipeline            (base trained too: base.trainable)
  lalrm       wonderland train lalrm --config <recipe's LaLRM config> --workdir <workdir>/lalrm
                  --config.vae.checkpoint=<vae-workdir>/model
  baselines   the held-out figures of the untrained models (same seeds), for the manifest
  assemble    --out: pipeline/ (the builder's with the TRAINED base as transformer/), branch/, lalrm/ and
              MANIFEST.json (recipe, commands, steps, held-out figures, wall times, file sizes); written whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_directory, write_json

logger = logging.getLogger("wonderland_jax")

MANIFEST = "MANIFEST.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The configs of one demo build; `train_scenes` > 0 renders that many scenes to disk first (the data stage)."""
  vae: str
  camera_dit: str
  lalrm: str
  train_scenes: int = 0


RECIPES = {
    "mini": Recipe("configs/vae_mini.py", "configs/camera_dit_mini.py", "configs/lalrm_mini.py", train_scenes=1600),
    "tiny": Recipe("configs/vae_tiny.py", "configs/camera_dit_demo.py", "configs/lalrm_tiny.py"),
}

# The tokenizer's training text: the sentencepiece model only has to exist (the demo's prompt is empty).
TOKENIZER_CORPUS = ("a castle at dusk", "a small red boat on a lake", "the camera flies over green hills",
                    "snow on the mountains", "a quiet street at night", "coloured spheres on a checkered floor",
                    "the camera orbits a garden", "a room with a wooden table")
TOKENIZER_PIECES = 48


def _repo_root() -> Path:
  from wonderland_jax.train.config import REPO_CONFIGS  # noqa: PLC0415
  return REPO_CONFIGS.parent


def train_tokenizer(folder: Path) -> None:
  """A tiny unigram sentencepiece model (T5's special ids: pad 0, EOS 1, unk 2) trained on TOKENIZER_CORPUS, laid
  out as a CogVideoX pipeline's tokenizer/: spiece.model and tokenizer_config.json."""
  import sentencepiece  # noqa: PLC0415
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(TOKENIZER_CORPUS * 4), model_writer=model, vocab_size=TOKENIZER_PIECES,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
      num_threads=1)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "spiece.model").write_bytes(model.getvalue())
  write_json(folder / "tokenizer_config.json", {
      "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
      "extra_ids": 100, "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
      "model_max_length": 226, "legacy": True})


def write_pipeline(out: str | Path, vae_directory: str | Path, transformer_config: dict, *, seed: int = 0,
                   overwrite: bool = False) -> Path:
  """Writes a tiny converted CogVideoX pipeline in `convert_pipeline`'s layout (`VideoPipeline.load` reads it):

    transformer/   a random CogVideoX transformer of `transformer_config` (diffusers config.json fields), seed
    vae/           a copy of the VAE checkpoint `vae_directory` (`wonderland train vae`: <workdir>/model)
    text_encoder/  a random 1-block T5 encoder of width transformer_config["text_embed_dim"]
    tokenizer/     `train_tokenizer`'s sentencepiece model
    scheduler/     scheduler_config.json: CogVideoX-5B-I2V's (`COGVIDEOX_I2V_SCHEDULER`)
    wonderland_pipeline.json

  Written whole or not at all; an existing `out` is replaced only with `overwrite`."""
  from flax import nnx  # noqa: PLC0415

  from wonderland_jax import checkpoints  # noqa: PLC0415
  from wonderland_jax.convert.pipeline import COMPONENTS, PIPELINE_JSON  # noqa: PLC0415
  from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig  # noqa: PLC0415
  from wonderland_jax.models.t5 import T5Config, T5Encoder  # noqa: PLC0415
  from wonderland_jax.models.t5_tokenizer import T5Tokenizer  # noqa: PLC0415
  from wonderland_jax.train.camera_dit import COGVIDEOX_I2V_SCHEDULER  # noqa: PLC0415

  out, vae_directory = Path(out), Path(vae_directory)
  kind, vae_config, _ = checkpoints.read_description(vae_directory)
  if kind != "cogvideox_vae":
    raise InputFileError(f"{vae_directory}: a {kind!r} checkpoint, not a VAE (`wonderland train vae`: <workdir>/model)")
  if out.exists() and not overwrite:
    raise WonderlandError(f"{out}: already exists; pass overwrite=True to replace it")
  transformer = CogVideoXTransformer(DiTConfig.from_diffusers(dict(transformer_config)), rngs=nnx.Rngs(seed))
  if transformer.config.in_channels != 2 * vae_config["latent_channels"]:
    raise WonderlandError(f"the transformer takes {transformer.config.in_channels} channels; the VAE of "
                          f"{vae_directory} has {vae_config['latent_channels']} latent channels (I2V needs twice)")
  with atomic_directory(out, manifest=False) as staging:  # MANIFEST.json / the pipeline json mark it
    checkpoints.save(staging / "transformer", transformer, kind="cogvideox_transformer",
                     config=transformer.config.to_dict())
    shutil.copytree(vae_directory, staging / "vae")
    train_tokenizer(staging / "tokenizer")
    tokenizer = T5Tokenizer.from_folder(staging / "tokenizer")
    width = transformer.config.text_embed_dim
    text_config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=max(1, width // 4), d_ff=2 * width,
                           num_layers=1, num_heads=4, feed_forward_proj="gated-gelu")
    checkpoints.save(staging / "text_encoder", T5Encoder(text_config, rngs=nnx.Rngs(seed + 1)), kind="t5_encoder",
                     config=text_config.to_dict())
    write_json(staging / "scheduler" / "scheduler_config.json", dict(COGVIDEOX_I2V_SCHEDULER))
    write_json(staging / PIPELINE_JSON, {"format": 1, "components": list(COMPONENTS),
                                         "source": "wonderland_jax.demo.build.write_pipeline (tiny demo models)",
                                         "dtype": "float32", "reports": {}})
  logger.info("demo build: wrote the tiny pipeline to %s", out)
  return out


def _run(command: list[str]) -> None:
  """Runs a `wonderland ...` command in a subprocess from the repository root (the configs' paths are relative
  to it)."""
  logger.info("demo build: %s", " ".join(command))
  result = subprocess.run([sys.executable, "-m", "wonderland_jax.cli", *command[1:]], cwd=_repo_root())
  if result.returncode:
    raise WonderlandError(f"`{' '.join(command)}` failed (exit status {result.returncode}); rerun the builder to "
                          "resume")


def _finished(workdir: Path) -> bool:
  return (workdir / "model" / "wonderland_model.json").is_file()


def _eval_records(workdir: Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    raise InputFileError(f"{path}: not found (is {workdir} a training workdir?)") from None
  return [record for record in map(json.loads, lines) if any(key.startswith("eval/") for key in record)]


def _last_eval(workdir: Path) -> dict:
  records = _eval_records(workdir)
  if not records:
    raise InputFileError(f"{workdir / 'metrics.jsonl'}: no evaluation recorded")
  return records[-1]


def _train_seconds(workdir: Path) -> float:
  """Wall seconds of the (last session of the) run: from its config.json to its exported model."""
  return (workdir / "model" / "wonderland_model.json").stat().st_mtime - (workdir / "config.json").stat().st_mtime


def _run_config(workdir: Path):
  import ml_collections  # noqa: PLC0415
  return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def untrained_figures(camera_dit_workdir: Path, lalrm_workdir: Path) -> dict:
  """The held-out figures of the models as initialised (the runs' own configs and seeds, same held-out clips)."""
  from flax import nnx  # noqa: PLC0415

  from wonderland_jax.data import pipeline  # noqa: PLC0415
  from wonderland_jax.diffusion.schedulers import make_tables  # noqa: PLC0415
  from wonderland_jax.train import camera_dit, lalrm  # noqa: PLC0415
  config = _run_config(lalrm_workdir)
  trainee = lalrm.LaLRMTrainee(config, nnx.Rngs(int(config.seed)))
  scalars, _ = lalrm.evaluate_reconstruction(trainee.lalrm, trainee.vae, lalrm.eval_clips(config), config)
  config = _run_config(camera_dit_workdir)
  trainee = camera_dit.CameraDiTTrainee(config, nnx.Rngs(int(config.seed)))
  clips = pipeline.eval_clips(config)
  held_out = {key: np.stack([clip[key] for clip in clips]) for key in ("frames", "viewmats", "intrinsics")}
  losses = camera_dit.evaluate_loss(trainee, held_out, config, make_tables(camera_dit.scheduler_config(config)))
  return {"lalrm": scalars, "camera_dit": losses}


def _size(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_scenes(data_dir: Path, data_config, num_train_scenes: int) -> dict[str, Path]:
  """The data stage: `num_train_scenes` training scenes (seed 0) and the held-out ones (`data_config.eval_seed`,
  `num_eval_scenes`) of the recipe's clips in RealEstate10K layout, each folder written whole (a rerun skips a
  finished one); returns {"train": ..., "eval": ...}."""
  from wonderland_jax.data.synthetic import write_synthetic_dataset  # noqa: PLC0415
  roots = {"train": data_dir / "train", "eval": data_dir / "eval"}
  counts = {"train": (num_train_scenes, 0),
            "eval": (int(data_config.num_eval_scenes), int(data_config.eval_seed))}
  for split, root in roots.items():
    if (root / "poses").is_dir():
      continue
    count, seed = counts[split]
    logger.info("demo build: rendering %d %s scenes to %s", count, split, root)
    write_synthetic_dataset(root, count, seed=seed, height=int(data_config.height), width=int(data_config.width),
                            num_frames=int(data_config.num_source_frames),
                            background=tuple(data_config.synthetic_background),
                            camera_paths=str(data_config.camera_paths))
  return roots


def build(workdir: str | Path, out: str | Path, *, recipe: str = "mini", vae_workdir: str | Path | None = None,
          overwrite: bool = False, train_flags: tuple[str, ...] = (), train_scenes: int | None = None) -> dict:
  """Runs the stages of the module docstring for `RECIPES[recipe]`; returns the manifest. `train_flags` are
  appended to every `wonderland train` command (e.g. "--config.train.steps=2" for a smoke run); `train_scenes`
  replaces the recipe's number of rendered training scenes."""
  from wonderland_jax.convert.pipeline import PIPELINE_JSON  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  if recipe not in RECIPES:
    raise WonderlandError(f"--recipe {recipe!r}: not one of {sorted(RECIPES)}")
  configs = RECIPES[recipe]
  if train_scenes is not None:
    if not configs.train_scenes:
      raise WonderlandError(f"--train-scenes: the {recipe!r} recipe renders its clips inside the steps")
    configs = dataclasses.replace(configs, train_scenes=train_scenes)
  for flag in train_flags:
    if not flag.startswith("--config."):
      raise WonderlandError(f"--train-flag {flag!r}: expected a config override like --config.train.steps=100")
  workdir, out = Path(workdir).absolute(), Path(out).absolute()
  vae_dir = Path(vae_workdir).absolute() if vae_workdir else workdir / "vae"
  if out.exists() and any(out.iterdir()) and not overwrite:
    raise WonderlandError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
  workdir.mkdir(parents=True, exist_ok=True)
  pipeline_dir, camera_dir, lalrm_dir = workdir / "pipeline", workdir / "camera_dit", workdir / "lalrm"
  extra_flags = list(train_flags)
  if configs.train_scenes:
    roots = write_scenes(workdir / "data", load_config(str(_repo_root() / configs.vae)).data, configs.train_scenes)
    extra_flags = ["--config.data.source=scenes", "--config.data.format=realestate10k",
                   f"--config.data.root={roots['train']}", f"--config.data.eval_root={roots['eval']}", *extra_flags]
  commands = {
      "vae": ["wonderland", "train", "vae", "--config", configs.vae, "--workdir", str(vae_dir), *extra_flags],
      "camera_dit": ["wonderland", "train", "camera-dit", "--config", configs.camera_dit, "--workdir",
                     str(camera_dir), f"--config.base.pipeline={pipeline_dir}", *extra_flags],
      "lalrm": ["wonderland", "train", "lalrm", "--config", configs.lalrm, "--workdir", str(lalrm_dir),
                f"--config.vae.checkpoint={vae_dir / 'model'}", *extra_flags],
  }
  if not _finished(vae_dir):
    _run(commands["vae"])
  demo_config = load_config(str(_repo_root() / configs.camera_dit))
  if not (pipeline_dir / PIPELINE_JSON).is_file():
    write_pipeline(pipeline_dir, vae_dir / "model", demo_config.base.random_config.to_dict(),
                   seed=int(demo_config.base.seed))
  if not (_finished(camera_dir) and (camera_dir / "base_transformer").is_dir()):
    _run(commands["camera_dit"])
  if not _finished(lalrm_dir):
    _run(commands["lalrm"])
  commands = {name: " ".join(command) for name, command in commands.items()}
  commands["pipeline"] = (f"write_pipeline({pipeline_dir}, {vae_dir / 'model'}, base.random_config of "
                          f"{configs.camera_dit}, seed={int(demo_config.base.seed)})")
  if configs.train_scenes:
    commands["data"] = (f"write_scenes({workdir / 'data'}, the data block of {configs.vae}, "
                        f"{configs.train_scenes})")

  baselines_path = workdir / "untrained.json"
  if baselines_path.is_file():
    untrained = json.loads(baselines_path.read_text())
  else:
    untrained = untrained_figures(camera_dir, lalrm_dir)
    write_json(baselines_path, untrained)

  lalrm_eval, camera_eval, vae_eval = _last_eval(lalrm_dir), _last_eval(camera_dir), _last_eval(vae_dir)
  manifest = {
      "builder": f"python -m wonderland_jax.demo.build --recipe {recipe} --workdir {workdir} --out {out}"
                 + "".join(f" --train-flag={flag}" for flag in train_flags)
                 + (f" --train-scenes {train_scenes}" if train_scenes is not None else "")
                 + (f" --vae-workdir {vae_dir}" if vae_workdir else ""),
      "recipe": recipe,
      "commands": commands,
      "steps": {"vae": int(vae_eval["step"]), "camera_dit": int(camera_eval["step"]), "lalrm": int(lalrm_eval["step"])},
      "train_seconds": {name: round(_train_seconds(path), 1) for name, path in
                        (("vae", vae_dir), ("camera_dit", camera_dir), ("lalrm", lalrm_dir))},
      "held_out": {
          "vae": {"psnr": vae_eval["eval/psnr"]},
          "camera_dit": {"v_mse": camera_eval["eval/v_mse"],
                         "v_mse_static_camera": camera_eval["eval/v_mse_static_camera"],
                         "untrained_v_mse": untrained["camera_dit"]["v_mse"]},
          "lalrm": {"psnr": lalrm_eval["eval/psnr"], "ssim": lalrm_eval["eval/ssim"],
                    "mean_colour_baseline_psnr": lalrm_eval.get("eval/baseline_psnr"),
                    "untrained_psnr": untrained["lalrm"]["psnr"]},
      },
  }
  with atomic_directory(out, manifest=False) as staging:  # MANIFEST.json / the pipeline json mark it
    shutil.copytree(pipeline_dir, staging / "pipeline", ignore=shutil.ignore_patterns("transformer"))
    shutil.copytree(camera_dir / "base_transformer", staging / "pipeline" / "transformer")
    shutil.copytree(camera_dir / "model", staging / "branch")
    shutil.copytree(lalrm_dir / "model", staging / "lalrm")
    manifest["bytes"] = {name: _size(staging / name) for name in ("pipeline", "branch", "lalrm")}
    manifest["bytes"].update({f"pipeline/{p.name}": _size(p) for p in sorted((staging / "pipeline").iterdir())
                              if p.is_dir()})
    manifest["bytes"]["total"] = sum(manifest["bytes"][name] for name in ("pipeline", "branch", "lalrm"))
    write_json(staging / MANIFEST, manifest)
  logger.info("demo build: wrote %s (%.1f MB)", out, manifest["bytes"]["total"] / 1e6)
  return manifest


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m wonderland_jax.demo.build", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the training workdirs and the tiny pipeline go here")
  parser.add_argument("--out", required=True, help="the shipped weights (wonderland_jax/demo/weights)")
  parser.add_argument("--recipe", default="mini", choices=sorted(RECIPES),
                      help="mini: 17 frames at 64x64 (issue 17); tiny: 9 frames at 32x32 (default: mini)")
  parser.add_argument("--vae-workdir", default=None, help="the VAE's workdir (default <workdir>/vae); a "
                                                          "finished one is used as it is")
  parser.add_argument("--train-flag", action="append", default=[], metavar="--config.KEY=VALUE",
                      help="appended to every `wonderland train` command (repeatable; e.g. "
                           "--train-flag=--config.train.steps=2 for a smoke run)")
  parser.add_argument("--train-scenes", type=int, default=None,
                      help="training scenes the data stage renders (default: the recipe's; mini: 1600)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="[wonderland] %(message)s", stream=sys.stderr)
  for noisy in ("jax", "absl"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  started = time.perf_counter()
  try:
    manifest = build(args.workdir, args.out, recipe=args.recipe, vae_workdir=args.vae_workdir,
                     overwrite=args.overwrite, train_flags=tuple(args.train_flag), train_scenes=args.train_scenes)
  except WonderlandError as err:
    sys.stderr.write(f"demo build: error: {err}\n")
    return 2
  held_out = manifest["held_out"]
  sys.stdout.write(
      f"demo build: {args.out} ({manifest['bytes']['total'] / 1e6:.1f} MB) in {time.perf_counter() - started:.0f}s; "
      f"LaLRM held-out PSNR {held_out['lalrm']['psnr']:.2f} dB (untrained {held_out['lalrm']['untrained_psnr']:.2f}), "
      f"camera DiT held-out v-MSE {held_out['camera_dit']['v_mse']:.3f} "
      f"(untrained {held_out['camera_dit']['untrained_v_mse']:.3f})\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
