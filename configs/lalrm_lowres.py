"""The paper's LaLRM, stage 1: low-resolution clips, one Gaussian per pixel (deconv strides (4, 16, 16)).

    wonderland prepare-latents --config configs/lalrm_lowres.py --out cache/re10k_lowres --num-clips 200000 \
        --config.data.source=scenes --config.data.format=realestate10k --config.data.root=/data/re10k/train
    wonderland train lalrm --config configs/lalrm_lowres.py --workdir runs/lalrm_lowres \
        --config.data.source=latents --config.data.root=cache/re10k_lowres --config.data.eval_root=cache/re10k_eval

Architecture (appendix D): latent patch 2, Plücker patch (4, 16, 16), 24 GS-LRM blocks x 1024 (head dim 64,
MLP ratio 4). Schedule: Adam (AdamW, weight decay 0.05), batch 24, 200K steps, cosine decay after warmup, bf16
compute, MSE + 0.5 x VGG-19 perceptual on 24 seen + 24 unseen views. The resolutions, the peak learning rate,
the betas and the perceptual weight are lost from our copy of the paper's text: 256x384 here (latents 32x48:
divisible by the patch), GS-LRM's 4e-4, (0.9, 0.95) and 0.5. On GPUs add --config.model.attention=cudnn, on TPUs
--config.model.attention=splash.
"""

import ml_collections

from wonderland_jax.train.config import data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(latent_channels=16, patch_size=2, temporal_compression=4, spatial_compression=8,
                      pose_dim=1024, hidden_size=1024, num_layers=24, head_dim=64, mlp_ratio=4, gaussian_stride=16,
                      near=0.1, far=20.0, scale_bias=2.3, max_log_scale=-1.2, opacity_bias=2.0, dtype="bfloat16",
                      attention="xla", sequence_parallel="none", remat="minimal")
  config.vae = dict(checkpoint="checkpoints/cogvideox-5b-i2v/vae", seed=0, random_config=dict())
  config.data = data_block(source="latents", encode_frames=False, num_frames=49, height=256, width=384,
                           num_target_seen=24, num_target_unseen=24, num_eval_scenes=100, worker_threads=8,
                           num_train_scenes=1000)
  config.render = dict(capacity=1 << 24, tile_size=16, background=(0.0, 0.0, 0.0), views_per_pass=0)
  config.loss = dict(perceptual_weight=0.5, vgg_weights="checkpoints/vgg19.pth")
  config.lpips = dict(backbone_weights="", heads_weights="")
  config.train = train_block(steps=200_000, batch_size=24, log_every=100, checkpoint_every=2000, eval_every=5000)
  config.optimizer = optimizer_block(learning_rate=4e-4, warmup_steps=2000, b2=0.95, weight_decay=0.05,
                                     final_lr_fraction=0.0)
  config.parallel = parallel_block("fsdp=-1")
  return config
