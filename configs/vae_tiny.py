"""A tiny CogVideoX VAE (8x space, 4x time, 16 latent channels) trained as an autoencoder on synthetic clips,
for the tiny LaLRM and the demo (~11 minutes on 2 CPU cores; held-out reconstruction 19.6 dB PSNR).

    wonderland train vae --config configs/vae_tiny.py --workdir runs/vae_tiny
    wonderland train lalrm --config configs/lalrm_tiny.py --workdir runs/lalrm_tiny \
        --config.vae.checkpoint=runs/vae_tiny/model
"""

import ml_collections

from wonderland_jax.train.config import TINY_VAE, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(TINY_VAE)
  config.data = data_block(source="synthetic", num_frames=9, height=32, width=32, num_target_seen=1,
                           num_target_unseen=0, num_train_scenes=100_000, synthetic_background=(0.0, 0.0, 0.0))
  config.loss = dict(kl_weight=1e-4)
  config.train = train_block(steps=1500, batch_size=4)
  config.optimizer = optimizer_block(learning_rate=2e-3, warmup_steps=50, b2=0.95, weight_decay=0.0)
  config.parallel = parallel_block()
  return config
