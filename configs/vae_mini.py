"""The mini Wonderland's VAE (issue 17, in progress): CogVideoX's layout (8x space, 4x time, 16 latent
channels) trained as an autoencoder on the mini clips (`train.config.MINI_DATA`: 17 frames at 64x64, camera-path
families, black background). Not yet trained for shipping; the goal is a held-out reconstruction >= 27 dB.

    wonderland train vae --config configs/vae_mini.py --workdir runs/mini/vae

Rendering the clips costs about as much as the step, so the builder renders the scenes once to disk
(`data.synthetic.write_synthetic_dataset(root, 1200, height=64, width=64, num_frames=21,
background=(0, 0, 0), camera_paths='families')`, RealEstate10K layout) and points the run at them:

    wonderland train vae --config configs/vae_mini.py --workdir runs/mini/vae --config.data.source=scenes \
        --config.data.format=realestate10k --config.data.root=runs/mini/data/train \
        --config.data.eval_root=runs/mini/data/eval

It trains on random 32x32 windows of the clips (`loss.crop`; the VAE is convolutional, the held-out PSNR is on
whole 64x64 frames), 17 frames, batch 4.
"""

import ml_collections

from wonderland_jax.train.config import MINI_DATA, MINI_VAE, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(MINI_VAE)
  config.data = data_block(**MINI_DATA | dict(worker_threads=1), num_target_seen=1, num_target_unseen=0)
  config.loss = dict(kl_weight=1e-4, crop=32)
  config.train = train_block(steps=4000, batch_size=4, eval_every=250, checkpoint_every=250)
  config.optimizer = optimizer_block(learning_rate=2e-3, warmup_steps=50, b2=0.95, weight_decay=0.0)
  config.parallel = parallel_block()
  return config
