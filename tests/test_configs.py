"""Every file in configs/ loads and its model, optimizer state and step build (abstractly, nothing
allocated); the full-size LaLRM has the paper's shape; stage 2 starts from stage 1's weights where the shapes
match."""


import jax
import numpy as np
import pytest
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig
from wonderland_jax.train.config import REPO_CONFIGS, load_config
from wonderland_jax.train.lalrm import initialize_from
from wonderland_jax.train.loop import setup
from wonderland_jax.train.tasks import make_task, planning_config, task_name

CONFIGS = sorted(path.stem for path in REPO_CONFIGS.glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_its_training_step_builds_abstractly(name):
  config = load_config(name)
  assert config.train.steps > 0 and config.train.batch_size > 0
  model = task_name(config)
  assert name.startswith(model.replace("-", "_"))
  planned = planning_config(model, config)  # weight files replaced by random weights of their shapes
  built = setup(make_task(model, planned), planned, abstract=True)
  assert built.num_trainable > 0
  if name == "camera_dit_5b":  # the frozen CogVideoX-5B base (and VAE); the branches train
    assert built.num_frozen > 5e9 and 1e9 < built.num_trainable < built.num_frozen


def test_full_size_lalrm():
  lowres, highres = load_config("lalrm_lowres"), load_config("lalrm_highres")
  config = LaLRMConfig.from_dict(lowres.model.to_dict())
  abstract = checkpoints.abstract_model("lalrm", config.to_dict())
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert 320e6 < count < 325e6, count  # 24 blocks x 12.6M, the pose conv 6.3M, the deconv 12.6M
  assert (config.map_downsample, LaLRMConfig.from_dict(highres.model.to_dict()).map_downsample) == (1, 2)
  assert (highres.data.height, highres.data.width, highres.train.steps, lowres.train.steps) == (480, 720, 100_000,
                                                                                                   200_000)
  tokens = 13 * (highres.data.height // 16) * (highres.data.width // 16)
  assert tokens == 17_550


def test_initialize_from_copies_matching_params(tmp_path):
  small = dict(hidden_size=32, pose_dim=16, num_layers=1, head_dim=16)
  stage1 = LaLRM(LaLRMConfig(**small, gaussian_stride=16), rngs=nnx.Rngs(1))
  checkpoints.save(tmp_path / "stage1", stage1, kind="lalrm", config=stage1.config.to_dict())
  stage2 = LaLRM(LaLRMConfig(**small, gaussian_stride=8), rngs=nnx.Rngs(2))
  initialize_from(stage2, str(tmp_path / "stage1"))
  np.testing.assert_array_equal(stage1.blocks[0].mlp.fc1.kernel[...], stage2.blocks[0].mlp.fc1.kernel[...])
  assert stage2.deconv.kernel.shape != stage1.deconv.kernel.shape
