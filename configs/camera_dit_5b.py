"""The paper's camera-guided video generator: CogVideoX-5B-I2V with both camera branches (Sec. 3.1, App. D).

    wonderland convert cogvideox --src /models/CogVideoX-5b-I2V --out checkpoints/cogvideox-5b-i2v
    wonderland train camera-dit --config configs/camera_dit_5b.py --workdir runs/camera_dit_5b \
        --config.data.format=realestate10k --config.data.root=/data/re10k/train

ControlNet branch: trainable copies of the first 21 of the 42 base blocks; LoRA branch: rank 256 on the
attention projections of every main block. The base is frozen and stored in bfloat16, compute in bfloat16,
each block rematerialised. Clips of 49 frames at 480x720 (13 x 60 x 90 latents) with each dataset's stride
(`wonderland_jax.data.clips.DEFAULT_STRIDES`; mix RE10K / ACID / DL3DV by running with each --config.data.format
or one COLMAP-style root). Adam, batch 24, 40K steps. The learning rate, betas and weight decay are lost from our
copy of the paper's text: 1e-4, (0.9, 0.999) and 1e-2 here (CameraCtrl's and the CogVideoX LoRA recipe's
values). Text: the prompt `text.prompt` for every clip (the datasets have no captions), embedded once by the
pipeline's T5 and cached in `text.embeddings`, or per-scene captions with --config.text.captions=captions.jsonl
(each distinct prompt embedded once, cached beside `text.embeddings`). On GPUs add --config.base.attention=cudnn,
on TPUs --config.base.attention=splash. `wonderland plan` gives the per-device memory of this step on a mesh.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from wonderland_jax.train.camera_dit import COGVIDEOX_I2V_SCHEDULER
from wonderland_jax.train.config import data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # random_config: CogVideoX-5B-I2V's transformer config.json, used when --config.base.pipeline="" (timing with
  # random weights) and by `wonderland plan`.
  config.base = dict(pipeline="checkpoints/cogvideox-5b-i2v", seed=0, trainable=False, param_dtype="bfloat16",
                     dtype="bfloat16", attention="xla", remat="full", sequence_parallel="none", random_config=dict(
                         num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16,
                         flip_sin_to_cos=True, freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42,
                         attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
                         temporal_compression_ratio=4, max_text_seq_length=226, norm_eps=1e-5,
                         spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
                         use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True))
  config.camera = dict(branches="dual", controlnet_layers=21, lora_rank=256, lora_alpha=placeholder(float),
                       lora_targets=("attn",), encoder_channels=128, spatial_compression=8)
  # The pipeline's VAE; random_config: CogVideoX-5B-I2V's VAE config.json (as for the base).
  config.vae = dict(checkpoint="", seed=0, random_config=dict(
      block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, norm_num_groups=32,
      temporal_compression_ratio=4, sample_height=480, sample_width=720, scaling_factor=0.7))
  # captions: optional per-scene prompts, a .jsonl of {"id": scene id, "prompt": ...} lines (train/captions.py;
  # the table is cached beside `embeddings`, 3.7 MB per distinct prompt); scenes without one get `prompt`.
  config.text = dict(embeddings="checkpoints/cogvideox-5b-i2v/text_embeddings.npz",
                     prompt="a static scene, the camera moves smoothly", captions="", dropout=0.1)
  config.scheduler = dict(COGVIDEOX_I2V_SCHEDULER)  # unused: the pipeline's scheduler_config.json is read
  config.objective = dict(image_noise_mean=-3.0, image_noise_std=0.5)
  config.data = data_block(source="scenes", num_frames=49, height=480, width=720, num_target_seen=0,
                           num_target_unseen=0, num_train_scenes=1000, num_eval_scenes=16, worker_threads=8)
  # eval_every > 0 needs --config.data.eval_root (held-out scenes).
  config.train = train_block(steps=40_000, batch_size=24, log_every=50, checkpoint_every=1000, eval_every=0)
  config.optimizer = optimizer_block(learning_rate=1e-4, warmup_steps=500, final_lr_fraction=1.0)
  config.parallel = parallel_block("fsdp=-1")
  return config
