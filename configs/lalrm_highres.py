"""The paper's LaLRM, stage 2: fine-tuning at 480x720 (CogVideoX's size) with one Gaussian per 2x2 pixels
(deconv strides (4, 8, 8)), from the stage-1 model: 13 x 30 x 45 = 17,550 tokens, 4,233,600 Gaussians per clip.

    wonderland train lalrm --config configs/lalrm_highres.py --workdir runs/lalrm_highres \
        --config.init_from=runs/lalrm_lowres/model \
        --config.data.source=latents --config.data.root=cache/mixed_highres --config.data.eval_root=cache/eval_highres

100K steps, the same optimiser and batch as stage 1 (configs/lalrm_lowres.py, whose docstring says which
numbers are ours). The paper mixes in 20K generated out-of-domain videos at this stage (a latent cache made from
them is just another --config.data.root). The deconv's shape changes with the stride, so it starts fresh
while every other weight comes from `init_from`. The 48 supervision views render in 6 rematerialised passes of 8
(`render.views_per_pass`): all at once the step needs 114 GiB per GPU, in passes 89 GiB on an H200 and 73 GiB on an
H100 (docs/benchmarks.md, "Full size on accelerators").
"""

import importlib.util
import pathlib


def get_config():
  path = pathlib.Path(__file__).with_name("lalrm_lowres.py")
  spec = importlib.util.spec_from_file_location("lalrm_lowres", path)
  lowres = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lowres)
  config = lowres.get_config()
  config.model.gaussian_stride = 8
  config.data.height, config.data.width = 480, 720
  config.render.capacity = 1 << 26
  config.render.views_per_pass = 8  # 48 views in 6 rematerialised passes: one pass's pair buffers at a time
  config.train.steps = 100_000
  config.init_from = ""
  return config
