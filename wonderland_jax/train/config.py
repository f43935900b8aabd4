"""Configs: `configs/<name>.py` files with `get_config() -> ml_collections.ConfigDict`, overridden from the
command line as `--config.train.steps=100` (ml_collections' config_flags, parsed with absl).

    config = load_config("configs/lalrm_tiny.py", ["--config.train.steps=100"])

The blocks every training config has (`train`, `optimizer`, `parallel`, the open `data` keys) come from
`train_block`, `optimizer_block`, `parallel_block` and `data_block`, so a shared default changes in one place;
a config passes what is its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

from wonderland_jax.errors import WonderlandError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # a source checkout's configs/
# The configs inside the package (wonderland_jax/configs: a link to configs/ in a checkout, a copy in a wheel).
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# The tiny configs' models: a CogVideoX VAE (8x space, 4x time, 16 channels) for 32x32 clips, and a random 4-block
# CogVideoX image-to-video transformer standing in for CogVideoX-5B-I2V (diffusers config.json fields).
TINY_VAE = dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                temporal_compression_ratio=4, sample_height=32, sample_width=32)
TINY_BASE = dict(num_attention_heads=2, attention_head_dim=32, in_channels=32, out_channels=16, time_embed_dim=64,
                 text_embed_dim=32, num_layers=4, sample_height=4, sample_width=4, sample_frames=9,
                 max_text_seq_length=8, use_rotary_positional_embeddings=True,
                 use_learned_positional_embeddings=True, dtype="float32", attention="xla", remat="none")


# The mini Wonderland's clips (issue 17; every stage trains and is evaluated on them): 17 frames at 64x64 (5
# latent frames of 8x8), consecutive frames of 21-frame paths drawn from the camera-path families (the first
# frame does not tell where the camera goes), over a black background. Held-out scenes: eval_seed.
MINI_VAE = dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                temporal_compression_ratio=4, sample_height=64, sample_width=64)  # configs/vae_mini.py's model
MINI_DATA = dict(source="synthetic", num_frames=17, height=64, width=64, num_source_frames=21, stride=(1, 1),
                 camera_paths="families", synthetic_background=(0.0, 0.0, 0.0), num_train_scenes=100_000,
                 eval_seed=1, num_eval_scenes=16)


# The mini Wonderland's base transformer (issue 17): CogVideoX's structure (I2V input channels, rotary + learned
# positional embeddings, patch 2) at 64x64 x 17 frames: 5 latent frames of 4x4 tokens, 6 blocks of width 128.
MINI_BASE = TINY_BASE | dict(num_attention_heads=4, attention_head_dim=32, time_embed_dim=128, num_layers=6,
                             sample_height=8, sample_width=8, sample_frames=17)


def train_block(*, steps: int, batch_size: int, **overrides) -> dict:
  """`config.train` (read by `train.loop`): steps, global batch, logging / checkpoint / eval cadence (steps),
  checkpoints kept, what a non-finite step does ('skip' or 'stop') and how many skipped updates end the run (in a
  row, or as a fraction of the steps), async checkpoint writes."""
  return dict(steps=steps, batch_size=batch_size, grad_accum=1, log_every=20, checkpoint_every=100,
              keep_checkpoints=3, eval_every=200, nonfinite="skip", max_skipped_in_a_row=10,
              max_skipped_fraction=0.1, async_checkpoints=True) | overrides


def optimizer_block(*, learning_rate: float, warmup_steps: int, **overrides) -> dict:
  """`config.optimizer` (read by `train.optim`): AdamW with warmup, then a cosine decay to final_lr_fraction."""
  return dict(learning_rate=learning_rate, warmup_steps=warmup_steps, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.01, clip_norm=1.0, final_lr_fraction=0.1, schedule="cosine") | overrides


def parallel_block(mesh: str = "") -> dict:
  """`config.parallel`: the device mesh ("" = the default device; e.g. "fsdp=-1", "data=2,fsdp=4,context=2"),
  dcn: axis sizes across slices / nodes; rules: logical-axis rules (default `nn.partitioning.DEFAULT_RULES`)."""
  return dict(mesh=mesh, dcn="", rules=placeholder(list))


def data_block(**fields) -> dict:
  """`config.data`: `fields` over the keys every training config leaves open for the command line (placeholders:
  --config.data.format=realestate10k --config.data.root=/data/re10k, ...) and the shared defaults. Every key of
  `data.pipeline.DATA_DEFAULTS` can be set."""
  return dict(num_eval_scenes=8, eval_seed=1, shuffle_seed=0, worker_threads=0, on_error="skip",
              format=placeholder(str), root=placeholder(str), eval_root=placeholder(str),
              images_dir=placeholder(str), stride=placeholder(tuple), scale_mode="max_distance",
              scale_target=1.0, scale_floor=0.1) | fields  # scale_floor: camera.DEFAULT_SCALE_FLOOR


def resolve_config_path(name_or_path: str) -> Path:
  """A config file path, or the bare name of one in the repository's configs/ ("lalrm_tiny")."""
  path = Path(name_or_path)
  if path.is_file():
    return path
  folders = [folder for folder in (REPO_CONFIGS, PACKAGE_CONFIGS) if folder.is_dir()]
  for folder in folders:
    candidate = folder / f"{name_or_path.removesuffix('.py')}.py"
    if not path.suffix and candidate.is_file():
      return candidate
  known = sorted(p.stem for p in folders[0].glob("*.py")) if folders else []
  raise WonderlandError(f"--config {name_or_path}: no such file" + (f" (known names: {', '.join(known)})" if known
                                                                    else ""))


def _one_line(error: Exception) -> str:
  """The message of an absl / ml_collections error, whose KeyErrors arrive as nested reprs."""
  text = str(error.args[0] if error.args else error)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  return " ".join(text.split())


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The config of `name_or_path` with `--config.a.b=value` overrides applied (types checked by
  ml_collections; an unknown key or a bad value is an error naming the flag)."""
  path = resolve_config_path(name_or_path)
  for override in overrides:
    if not override.startswith("--config."):
      raise WonderlandError(f"unexpected argument {override!r}: overrides look like --config.train.steps=100")
  flag_values = flags.FlagValues()
  argv = ["wonderland", f"--config={path}", *overrides]
  config_flags.DEFINE_config_file("config", default=None, flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as error:
    raise WonderlandError(f"{path}: {_one_line(error)}") from None
  return flag_values.config


def pose_normalization(config: ml_collections.ConfigDict) -> dict:
  """{'scale_mode', 'scale_target', 'scale_floor'} of a training config's data (defaults: `data.DATA_DEFAULTS`):
  what its clips are normalised with (`camera.normalize_poses`) and what its export records for inference
  (`checkpoints.pose_normalization`), which applies them to the user's cameras. The training step, whose clips
  are normalised already, uses `step_pose_normalization`."""
  from wonderland_jax.data.pipeline import DATA_DEFAULTS  # noqa: PLC0415 (grain, only when training)
  data = config.get("data") or {}
  return {"scale_mode": str(data.get("scale_mode", DATA_DEFAULTS["scale_mode"])),
          "scale_target": float(data.get("scale_target", DATA_DEFAULTS["scale_target"])),
          "scale_floor": float(data.get("scale_floor", DATA_DEFAULTS["scale_floor"]))}


def step_pose_normalization(config: ml_collections.ConfigDict) -> dict:
  """What a training step computes its clips' conditioning rays with (`camera.conditioning_rays`,
  `models.lalrm.predict`): `camera.renormalization` of `pose_normalization(config)`, which leaves the clips (the
  data pipeline normalised them) as they are, so the rays equal those inference computes from the raw cameras.
  The same settings but for 'extent_floor', whose floor becomes the target."""
  from wonderland_jax.camera.poses import renormalization  # noqa: PLC0415 (jax, only when training)
  return renormalization(**pose_normalization(config))
