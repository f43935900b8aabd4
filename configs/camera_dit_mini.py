"""The mini Wonderland's camera-guided transformer (issue 17, in progress): a 6-block CogVideoX base (trained too,
`base.trainable`) with both camera branches, on the mini clips (`train.config.MINI_DATA`: 17 frames at 64x64,
camera-path families, so the first frame does not tell where the camera goes).

    wonderland train camera-dit --config configs/camera_dit_mini.py --workdir runs/mini/camera_dit \\
        --config.base.pipeline=runs/mini/pipeline

`base.pipeline` is a converted pipeline with the mini base's shapes (`demo.build.write_pipeline` with
`base.random_config`, the trained mini VAE of configs/vae_mini.py, a tiny T5). The clips can come from the scenes
rendered once to disk, as for the VAE (`--config.data.source=scenes --config.data.format=realestate10k
--config.data.root=... --config.data.eval_root=...`). The held-out v-MSE is reported with the true cameras and
with a static camera: the gap is the branches' use of the cameras.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from wonderland_jax.train.camera_dit import COGVIDEOX_I2V_SCHEDULER
from wonderland_jax.train.config import (
  MINI_BASE,
  MINI_DATA,
  TINY_VAE,
  data_block,
  optimizer_block,
  parallel_block,
  train_block,
)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.base = dict(pipeline="runs/mini/pipeline", seed=0, trainable=True, param_dtype="float32", dtype="",
                     attention="", remat="", sequence_parallel="", random_config=MINI_BASE)
  config.camera = dict(branches="dual", controlnet_layers=2, lora_rank=8, lora_alpha=placeholder(float),
                       lora_targets=("attn",), encoder_channels=32, spatial_compression=8)
  config.vae = dict(checkpoint="", seed=0, random_config=TINY_VAE | dict(sample_height=64, sample_width=64))
  config.text = dict(embeddings="", prompt="", dropout=0.0)  # the empty prompt everywhere, as the demo samples
  config.scheduler = dict(COGVIDEOX_I2V_SCHEDULER)  # unused with a pipeline: its scheduler_config.json is read
  config.objective = dict(image_noise_mean=-3.0, image_noise_std=0.5)
  config.data = data_block(**MINI_DATA | dict(worker_threads=1), num_target_seen=0, num_target_unseen=0)
  config.train = train_block(steps=4000, batch_size=8, log_every=50, checkpoint_every=250, keep_checkpoints=2,
                             eval_every=500)
  config.optimizer = optimizer_block(learning_rate=1e-3, warmup_steps=100, final_lr_fraction=0.05)
  config.parallel = parallel_block()
  return config
