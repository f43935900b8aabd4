"""The mini Wonderland's camera-guided transformer (issue 17, in progress): a 6-block CogVideoX base (trained too,
`base.trainable`) with both camera branches, on the mini clips (`train.config.MINI_DATA`: 17 frames at 64x64,
camera-path families, so the first frame does not tell where the camera goes).

    wonderland train camera-dit --config configs/camera_dit_mini.py --workdir runs/mini/camera_dit \\
        --config.base.pipeline=runs/mini/pipeline

`base.pipeline` is a converted pipeline with the mini base's shapes (`demo.build.write_pipeline` with
`base.random_config`, the trained mini VAE of configs/vae_mini.py, a tiny T5). The clips can come from the scenes
rendered once to disk, as for the VAE (`--config.data.source=scenes --config.data.format=realestate10k
--config.data.root=... --config.data.eval_root=...`). The held-out v-MSE is reported with the true cameras and
with a static camera: the gap is the branches' use of the cameras. Everything else is configs/camera_dit_demo.py's.
"""

import importlib.util
import pathlib

from wonderland_jax.train.config import MINI_BASE, MINI_DATA, MINI_VAE, data_block


def get_config():
  path = pathlib.Path(__file__).with_name("camera_dit_demo.py")
  spec = importlib.util.spec_from_file_location("camera_dit_demo", path)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  config = demo.get_config()
  config.base.pipeline = "runs/mini/pipeline"
  config.base.random_config = MINI_BASE
  config.vae.random_config = MINI_VAE
  config.data = data_block(**MINI_DATA | dict(worker_threads=1), num_target_seen=0, num_target_unseen=0)
  config.train.steps = 4000
  return config
