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


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # dtype / attention / remat / sequence_parallel: "" = the base's own setting. trainable: the base trains too.
  config.base = dict(pipeline="", seed=0, trainable=False, param_dtype="float32", dtype="", attention="", remat="",
                     sequence_parallel="",
                     random_config=dict(num_attention_heads=2, attention_head_dim=32, in_channels=32, out_channels=16,
                                        time_embed_dim=64, text_embed_dim=32, num_layers=4, sample_height=4,
                                        sample_width=4, sample_frames=9, max_text_seq_length=8,
                                        use_rotary_positional_embeddings=True,
                                        use_learned_positional_embeddings=True, dtype="float32", attention="xla",
                                        remat="none"))
  config.camera = dict(branches="dual", controlnet_layers=2, lora_rank=8, lora_alpha=placeholder(float),
                       lora_targets=("attn",), encoder_channels=32, spatial_compression=8)
  config.vae = dict(checkpoint="", seed=0, random_config=dict(
      block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16,
      temporal_compression_ratio=4, sample_height=32, sample_width=32))
  config.text = dict(embeddings="", prompt="", dropout=0.1)
  config.scheduler = dict(COGVIDEOX_I2V_SCHEDULER)
  config.objective = dict(image_noise_mean=-3.0, image_noise_std=0.5)
  # Every key of wonderland_jax.data.pipeline.DATA_DEFAULTS can be set (see configs/lalrm_tiny.py).
  config.data = dict(source="synthetic", num_frames=9, height=32, width=32, num_target_seen=0, num_target_unseen=0,
                     num_train_scenes=100_000, num_eval_scenes=8, eval_seed=1, shuffle_seed=0, worker_threads=0,
                     on_error="skip", format=placeholder(str), root=placeholder(str), eval_root=placeholder(str),
                     images_dir=placeholder(str), stride=placeholder(tuple), scale_mode="max_distance",
                     scale_target=1.0)
  config.train = dict(steps=600, batch_size=4, grad_accum=1, log_every=20, checkpoint_every=100,
                      keep_checkpoints=3, eval_every=100, nonfinite="skip", async_checkpoints=True)
  config.optimizer = dict(learning_rate=1e-3, warmup_steps=30, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                          clip_norm=1.0, final_lr_fraction=0.1, schedule="cosine")
  # Device mesh (wonderland_jax.parallel): "" = the default device; e.g. "fsdp=-1", "data=2,fsdp=4,context=2";
  # dcn: axis sizes across slices / nodes; rules: logical-axis rules (default parallel.DEFAULT_RULES).
  config.parallel = dict(mesh="", dcn="", rules=placeholder(list))
  return config
