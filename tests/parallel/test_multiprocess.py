"""Two local processes (2 CPU devices each, started by launch/local.py) on 127.0.0.1 train the tiny LaLRM and the
tiny camera DiT on a
4-device FSDP mesh, checkpoint and export together; the checkpoint then restores in this process onto an
8-device mesh of another shape with the same values."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.models import camera_dit

REPO = Path(__file__).resolve().parents[2]
RUNS = {
    "lalrm": ["--config.model.hidden_size=32", "--config.model.pose_dim=16", "--config.model.num_layers=1",
              "--config.model.head_dim=16", "--config.train.batch_size=4", "--config.train.eval_every=0"],
    "camera-dit": ["--config.base.random_config.num_layers=2", "--config.camera.controlnet_layers=1",
                   "--config.camera.encoder_channels=8", "--config.train.batch_size=4",
                   "--config.train.eval_every=0"],
}
CONFIGS = {"lalrm": "lalrm_tiny", "camera-dit": "camera_dit_tiny"}


def _exported(model, directory):
  if model == "lalrm":
    loaded = checkpoints.load(directory / "model")
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded, nnx.Param)))
  return jax.tree.map(np.asarray, camera_dit.branch_params(
      camera_dit.load(directory / "base_transformer", directory / "model")))


@pytest.mark.parametrize("model", ["lalrm", "camera-dit"])
def test_two_processes_train_and_the_checkpoint_restores_on_another_mesh(tmp_path, model):
  workdir = tmp_path / "run"
  command = [sys.executable, str(REPO / "launch" / "local.py"), "--processes", "2", "--devices-per-process", "2",
             "--", "wonderland", "train", model, "--config", CONFIGS[model], "--workdir", str(workdir),
             "--config.parallel.mesh=fsdp=4", "--config.train.steps=2", "--config.train.checkpoint_every=2",
             *RUNS[model]]
  result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  assert any(line.startswith("[0]") and "process 0 of 2" in line and "4 global devices" in line for line in lines)
  # Logs from process 0 only.
  assert any(line.startswith("[0]") and "trained 2 steps" in line for line in lines)
  assert not any(line.startswith("[1]") and "trained 2 steps" in line for line in lines)
  exported = _exported(model, workdir)
  (workdir / "model").rename(tmp_path / "first_export")
  # This process: 8 devices as (data=2, fsdp=2, tensor=2); the run is complete, so it restores and exports.
  assert main(["train", model, "--config", CONFIGS[model], "--workdir", str(workdir),
               "--config.parallel.mesh=data=2,fsdp=2,tensor=2", "--config.train.steps=2", *RUNS[model]]) == 0
  jax.tree.map(np.testing.assert_array_equal, _exported(model, workdir), exported)
