"""A tiny camera-guided transformer whose branches train on 2 CPU cores in minutes, on synthetic posed videos.

    wonderland train camera-dit --config configs/camera_dit_tiny.py --workdir runs/camera_dit_tiny

The base is a random 4-block CogVideoX transformer (fixed seed, frozen: it stands in for CogVideoX-5B-I2V,
with the same structure: I2V input channels, rotary + learned positional embeddings), the VAE the tiny random
one of configs/lalrm_tiny.py (or a trained one: --config.vae.checkpoint=runs/vae_tiny/model). Clips of 9
frames at 32x32 of the procedural synthetic scenes rendered by our rasterizer along random camera paths.
Both branches (ControlNet copy of the first 2 blocks, rank-8 camera-LoRA) train; the held-out v-MSE is
reported with the true cameras and with a static camera (the branches' use of the cameras shows as the gap).
The export: <workdir>/model (the branch), <workdir>/base_transformer and <workdir>/vae (the random ones).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from wonderland_jax.train.camera_dit import COGVIDEOX_I2V_SCHEDULER
from wonderland_jax.train.config import TINY_BASE, TINY_VAE, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # dtype / attention / remat / sequence_parallel: "" = the base's own setting. trainable: the base trains too.
  config.base = dict(pipeline="", seed=0, trainable=False, param_dtype="float32", dtype="", attention="", remat="",
                     sequence_parallel="", random_config=TINY_BASE)
  config.camera = dict(branches="dual", controlnet_layers=2, lora_rank=8, lora_alpha=placeholder(float),
                       lora_targets=("attn",), encoder_channels=32, spatial_compression=8)
  config.vae = dict(checkpoint="", seed=0, random_config=TINY_VAE)
  # prompt: every clip's prompt (no captions) / the uncaptioned scenes'; captions: a .jsonl of {"id": scene id,
  # "prompt": ...} per line (needs base.pipeline's T5; train/captions.py); dropout: P(empty prompt) per clip.
  config.text = dict(embeddings="", prompt="", captions="", dropout=0.1)
  config.scheduler = dict(COGVIDEOX_I2V_SCHEDULER)
  config.objective = dict(image_noise_mean=-3.0, image_noise_std=0.5)
  # Every key of wonderland_jax.data.pipeline.DATA_DEFAULTS can be set (see configs/lalrm_tiny.py).
  config.data = data_block(source="synthetic", num_frames=9, height=32, width=32, num_target_seen=0,
                           num_target_unseen=0, num_train_scenes=100_000)
  config.train = train_block(steps=600, batch_size=4, eval_every=100)
  config.optimizer = optimizer_block(learning_rate=1e-3, warmup_steps=30)
  config.parallel = parallel_block()
  return config
