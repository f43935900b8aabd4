"""A tiny CogVideoX VAE (8x space, 4x time, 16 latent channels) trained as an autoencoder on synthetic clips,
for the tiny LaLRM and the demo (~11 minutes on 2 CPU cores; held-out reconstruction 19.6 dB PSNR).

    wonderland train vae --config configs/vae_tiny.py --workdir runs/vae_tiny
    wonderland train lalrm --config configs/lalrm_tiny.py --workdir runs/lalrm_tiny \
        --config.vae.checkpoint=runs/vae_tiny/model
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                      latent_channels=16, temporal_compression_ratio=4, sample_height=32, sample_width=32)
  config.data = dict(source="synthetic", num_frames=9, height=32, width=32, num_target_seen=1, num_target_unseen=0,
                     num_train_scenes=100_000, num_eval_scenes=8, eval_seed=1, shuffle_seed=0, worker_threads=0,
                     on_error="skip", format=placeholder(str), root=placeholder(str), eval_root=placeholder(str),
                     images_dir=placeholder(str), stride=placeholder(tuple), synthetic_background=(0.0, 0.0, 0.0))
  config.loss = dict(kl_weight=1e-4)
  config.train = dict(steps=1500, batch_size=4, grad_accum=1, log_every=20, checkpoint_every=100,
                      keep_checkpoints=3, eval_every=200, nonfinite="skip", async_checkpoints=True)
  config.optimizer = dict(learning_rate=2e-3, warmup_steps=50, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                          clip_norm=1.0, final_lr_fraction=0.1, schedule="cosine")
  # Device mesh (wonderland_jax.parallel): "" = the default device; e.g. "fsdp=-1", "data=2,fsdp=4,context=2";
  # dcn: axis sizes across slices / nodes; rules: logical-axis rules (default parallel.DEFAULT_RULES).
  config.parallel = dict(mesh="", dcn="", rules=placeholder(list))
  return config
