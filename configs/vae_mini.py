"""The mini Wonderland's VAE (issue 17, in progress): CogVideoX's layout (8x space, 4x time, 16 latent
channels) trained as an autoencoder on the mini clips (`train.config.MINI_DATA`: 17 frames at 64x64, camera-path
families, black background). Not yet trained for shipping; the goal is a held-out reconstruction >= 27 dB.

    wonderland train vae --config configs/vae_mini.py --workdir runs/mini/vae

One step (batch 2, 17 frames) takes about 2.2 s on 2 CPU cores with the VAE's Python frame loop
(`python benchmarks/vae_train_step.py`).
"""

import ml_collections

from wonderland_jax.train.config import MINI_DATA, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                      temporal_compression_ratio=4, sample_height=64, sample_width=64)
  config.data = data_block(**MINI_DATA, num_target_seen=1, num_target_unseen=0)
  config.loss = dict(kl_weight=1e-4)
  config.train = train_block(steps=1000, batch_size=2, eval_every=250)
  config.optimizer = optimizer_block(learning_rate=2e-3, warmup_steps=50, b2=0.95, weight_decay=0.0)
  config.parallel = parallel_block()
  return config
