"""The mini Wonderland's LaLRM (issue 17): configs/lalrm_tiny.py's model on the mini clips
(`train.config.MINI_DATA`: 17 frames at 64x64 = 5 latent frames of 8x8, camera-path families, black background),
encoded by the trained mini VAE (configs/vae_mini.py), supervised on 2 views of the clip and 2 views outside it.

    wonderland train lalrm --config configs/lalrm_mini.py --workdir runs/mini/lalrm \\
        --config.vae.checkpoint=runs/mini/vae/model

As for the VAE, the clips can come from the scenes rendered once to disk (`--config.data.source=scenes
--config.data.format=realestate10k --config.data.root=... --config.data.eval_root=...`): the 21-frame paths hold
4 frames outside every 17-frame clip, the unseen views. Goals (benchmarks/mini_wonderland.py, 16 held-out
scenes): >= 24 dB on the clip's views, >= 22 dB on unseen ones.
"""

import importlib.util
import pathlib

from wonderland_jax.train.config import MINI_DATA, MINI_VAE, data_block


def get_config():
  path = pathlib.Path(__file__).with_name("lalrm_tiny.py")
  spec = importlib.util.spec_from_file_location("lalrm_tiny", path)
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  config = tiny.get_config()
  config.vae.random_config = MINI_VAE
  config.data = data_block(**MINI_DATA | dict(worker_threads=1), encode_frames=True, num_target_seen=2,
                           num_target_unseen=2)
  config.train.steps = 2000
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  return config
