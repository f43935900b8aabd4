"""The paper's LaLRM, stage 2: fine-tuning at 480x720 (CogVideoX's size) with one Gaussian per 2x2 pixels
(deconv strides (4, 8, 8)), from the stage-1 model: 13 x 30 x 45 = 17,550 tokens, 4,233,600 Gaussians per clip.

    wonderland prepare-latents --config configs/lalrm_lowres.py --out cache/re10k_highres --num-clips 200000 \
        --config.data.height=480 --config.data.width=720 --config.data.source=realestate10k \
        --config.data.root=/data/re10k/train
    wonderland generate-latents --model checkpoints/cogvideox-5b-i2v --branch runs/camera_dit/model \
        --images prompts/ --poses /data/re10k/train --num 20000 --target-views 48 --out cache/generated
    wonderland train lalrm --config configs/lalrm_highres.py --workdir runs/lalrm_highres \
        --config.init_from=runs/lalrm_lowres/model \
        --config.data.sources.benchmark.root=cache/re10k_highres \
        --config.data.sources.benchmark.eval_root=cache/re10k_eval_highres \
        --config.data.sources.generated.root=cache/generated

100K steps, the same optimiser and batch as stage 1 (configs/lalrm_lowres.py, whose docstring says which
numbers are ours). As in the paper, the data mixes the benchmark clips with ~20K videos the camera-guided model
generated (`data.sources`: weights 0.75 / 0.25 are ours; the paper does not give its ratio; a weight of 0 leaves a
source out). Benchmark latents are read as posterior samples (`data.posterior = 'sample'`: the generated latents
are samples of the video model, not posterior means, so the LaLRM sees both kinds alike; 'mean' reads the cached
means as stage 1 does). The deconv's shape changes with the stride, so it starts fresh
while every other weight comes from `init_from`. The 48 supervision views render in 6 rematerialised passes of 8
(`render.views_per_pass`): all at once the step needs 114 GiB per GPU, in passes 89 GiB on an H200 and 73 GiB on an
H100 (docs/benchmarks.md, "Full size on accelerators").
"""

import importlib.util
import pathlib

from ml_collections.config_dict import placeholder


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
  config.data.posterior = "sample"
  config.data.sources = dict(
      benchmark=dict(source="latents", root=placeholder(str), eval_root=placeholder(str), weight=0.75),
      generated=dict(source="latents", root=placeholder(str), weight=0.25))
  return config
