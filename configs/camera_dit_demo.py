"""The demo's camera-guided transformer: configs/camera_dit_tiny.py with its base TRAINED too, on the clips the
tiny VAE and LaLRM see (synthetic scenes over a black background), from the tiny pipeline the demo builder writes.

    python -m wonderland_jax.demo.build --workdir runs/demo --out wonderland_jax/demo/weights   # runs all of it
    wonderland train camera-dit --config configs/camera_dit_demo.py --workdir runs/demo/camera_dit \
        --config.base.pipeline=runs/demo/pipeline

`base.pipeline` is the builder's tiny converted pipeline (`wonderland_jax.demo.build.write_pipeline`: a random
4-block base transformer, the trained tiny VAE, a random tiny T5 and sentencepiece tokenizer, the CogVideoX-5B-I2V
scheduler); the base starts from its random weights and every param of the camera DiT trains
(`base.trainable`): a random frozen base cannot make meaningful videos. Text: the pipeline's T5 embeddings of
the empty prompt (the demo samples with the prompt ""), so training and sampling see the same embeddings.
The export: <workdir>/model (the branch) and <workdir>/base_transformer (the trained base); the demo's pipeline
is the builder's with that base swapped in. Figures: docs/demo.md.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from wonderland_jax.train.camera_dit import COGVIDEOX_I2V_SCHEDULER
from wonderland_jax.train.config import TINY_BASE, TINY_VAE, data_block, optimizer_block, parallel_block, train_block


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # random_config: the shapes the builder gives the pipeline's random base (and `wonderland plan` reads).
  config.base = dict(pipeline="runs/demo/pipeline", seed=0, trainable=True, param_dtype="float32", dtype="",
                     attention="", remat="", sequence_parallel="", random_config=TINY_BASE)
  config.camera = dict(branches="dual", controlnet_layers=2, lora_rank=8, lora_alpha=placeholder(float),
                       lora_targets=("attn",), encoder_channels=32, spatial_compression=8)
  # The pipeline's VAE (the trained tiny one) unless set.
  config.vae = dict(checkpoint="", seed=0, random_config=TINY_VAE)
  # The empty prompt for every clip: no dropout needed (the unconditional embeddings are the same).
  config.text = dict(embeddings="", prompt="", captions="", dropout=0.0)
  config.scheduler = dict(COGVIDEOX_I2V_SCHEDULER)  # unused: the pipeline's scheduler_config.json is read
  config.objective = dict(image_noise_mean=-3.0, image_noise_std=0.5)
  config.data = data_block(source="synthetic", num_frames=9, height=32, width=32, num_target_seen=0,
                           num_target_unseen=0, num_train_scenes=100_000,
                           synthetic_background=(0.0, 0.0, 0.0))  # as the VAE's and the LaLRM's
  config.train = train_block(steps=3000, batch_size=8, log_every=50, checkpoint_every=250, keep_checkpoints=2,
                             eval_every=500)
  config.optimizer = optimizer_block(learning_rate=1e-3, warmup_steps=100, final_lr_fraction=0.05)
  config.parallel = parallel_block()
  return config
