"""Training on a mesh: `--config.parallel.mesh` (FSDP + tensor + context, ring attention) gives the params an
unsharded run gives, and its checkpoint restores onto a mesh of another shape with equal values."""

import jax
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.cli import main

TINY = ["--config.model.hidden_size=32", "--config.model.pose_dim=16", "--config.model.num_layers=1",
        "--config.model.head_dim=16", "--config.train.batch_size=2", "--config.train.log_every=1",
        "--config.train.checkpoint_every=3", "--config.train.eval_every=0", "--config.train.steps=3"]


def _train(workdir, *extra):
  return main(["train", "lalrm", "--config", "lalrm_tiny", "--workdir", str(workdir), *TINY, *extra])


def _params(directory):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(checkpoints.load(directory), nnx.Param)))


def test_sharded_steps_equal_unsharded_and_restore_on_another_mesh(tmp_path):
  assert _train(tmp_path / "single") == 0
  assert _train(tmp_path / "sharded", "--config.parallel.mesh=fsdp=2,context=2,tensor=2",
                "--config.model.sequence_parallel=ring") == 0
  single, sharded = _params(tmp_path / "single" / "model"), _params(tmp_path / "sharded" / "model")
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(single))
  errors = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), single, sharded))
  assert max(errors) <= 2e-5 * scale, max(errors)
  # The step-3 checkpoint onto a (data=2, tensor=4) mesh: the run has nothing left to do, restores and exports.
  (tmp_path / "sharded" / "model").rename(tmp_path / "first_export")
  assert _train(tmp_path / "sharded", "--config.parallel.mesh=data=2,tensor=4") == 0
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "sharded" / "model"),
               _params(tmp_path / "first_export"))
  assert _train(tmp_path / "bad", "--config.parallel.mesh=fsdp=8") == 2  # batch 2 over 8 devices
