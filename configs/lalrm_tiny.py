"""A tiny LaLRM that trains on 2 CPU cores in minutes, on the procedural synthetic dataset.

    wonderland train vae --config configs/vae_tiny.py --workdir runs/vae_tiny            # ~11 min
    wonderland train lalrm --config configs/lalrm_tiny.py --workdir runs/lalrm_tiny \
        --config.vae.checkpoint=runs/vae_tiny/model                                      # ~10 min

With that VAE the held-out novel views reach 18.1 dB PSNR, +5.2 dB over predicting the mean colour
(docs/benchmarks.md). Without --config.vae.checkpoint the VAE has random fixed weights (no first command
needed), whose latents carry the colours poorly: +2.3 dB.

Scenes are random Gaussian blobs rendered by our own rasterizer (exact ground truth); clips of 9 frames at
32x32 (3 latent frames of 4x4), 4 supervision views. The frozen VAE encodes the frames inside the step. One
Gaussian per 2x2 pixels (gaussian_stride 4 with p = 1, the paper's high-resolution ratio).
"""

import ml_collections

from wonderland_jax.train.config import TINY_VAE, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(latent_channels=16, patch_size=1, temporal_compression=4, spatial_compression=8,
                      pose_dim=64, hidden_size=128, num_layers=4, head_dim=32, mlp_ratio=4, gaussian_stride=4,
                      near=0.5, far=8.0, scale_bias=2.3, max_log_scale=-1.2, opacity_bias=2.0, dtype="float32",
                      attention="xla", sequence_parallel="none", remat="none")
  config.vae = dict(checkpoint="", seed=0, random_config=TINY_VAE)
  # Every key of wonderland_jax.data.pipeline.DATA_DEFAULTS can be set; the unset ones (placeholders) can be
  # given on the command line, e.g. --config.data.source=latents --config.data.root=cache/.
  config.data = data_block(source="synthetic", encode_frames=True, num_frames=9, height=32, width=32,
                           num_target_seen=2, num_target_unseen=2, num_train_scenes=100_000,
                           synthetic_background=(0.0, 0.0, 0.0))  # = render.background
  config.render = dict(capacity=0, tile_size=16, background=(0.0, 0.0, 0.0), views_per_pass=0)
  config.loss = dict(perceptual_weight=0.0, vgg_weights="")
  config.lpips = dict(backbone_weights="", heads_weights="")
  config.train = train_block(steps=1200, batch_size=4)
  config.optimizer = optimizer_block(learning_rate=2e-3, warmup_steps=50, b2=0.95, weight_decay=0.05)
  config.parallel = parallel_block()
  return config
