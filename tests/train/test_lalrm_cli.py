"""`wonderland train lalrm`, `prepare-latents` and `reconstruct` on tiny overrides of configs/lalrm_tiny.py:
a run killed with SIGTERM and then SIGKILL ends with exactly the params of an uninterrupted run; the trained
model reconstructs a synthetic video into a .ply that `wonderland render` renders."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from wonderland_jax import checkpoints, cli
from wonderland_jax.data.synthetic import write_synthetic_dataset
from wonderland_jax.reconstruct import default_vae_directory
from wonderland_jax.splat import load_ply

TINY = ["--config.model.hidden_size=32", "--config.model.pose_dim=16", "--config.model.num_layers=1",
        "--config.model.head_dim=16", "--config.train.batch_size=2", "--config.train.log_every=2",
        "--config.train.checkpoint_every=2", "--config.train.eval_every=0", "--config.data.num_eval_scenes=2"]
REPO = Path(__file__).resolve().parents[2]


def _command(workdir, steps):
  return [sys.executable, "-m", "wonderland_jax.cli", "train", "lalrm", "--config", "lalrm_tiny", "--workdir",
          str(workdir), f"--config.train.steps={steps}", *TINY]


def _params(directory):
  return jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(checkpoints.load(directory),
                                                                               nnx.Param))))


def _wait_for_checkpoint(process, workdir, step, timeout=300):
  deadline = time.monotonic() + timeout
  while not (workdir / "checkpoints" / str(step)).is_dir():
    assert process.poll() is None, process.communicate()[0]
    assert time.monotonic() < deadline, "no checkpoint in time"
    time.sleep(0.2)


def test_killed_run_resumes_exactly(tmp_path):
  environment = dict(os.environ, PYTHONPATH=str(REPO))
  straight = subprocess.run(_command(tmp_path / "straight", 10), capture_output=True, text=True, env=environment,
                            cwd=tmp_path)
  assert straight.returncode == 0, straight.stderr
  workdir = tmp_path / "killed"
  # SIGTERM (preemption): a clean stop with a checkpoint at the step it reached.
  process = subprocess.Popen(_command(workdir, 10), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=environment, cwd=tmp_path)
  _wait_for_checkpoint(process, workdir, 2)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=300)[0]
  assert process.returncode == cli.EXIT_PREEMPTED, output
  assert "stopped at step" in output and not (workdir / "model").exists()
  # SIGKILL: no chance to save; the rerun starts from the last complete checkpoint.
  process = subprocess.Popen(_command(workdir, 10), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=environment, cwd=tmp_path)
  _wait_for_checkpoint(process, workdir, 6)
  process.kill()
  output = process.communicate(timeout=60)[0]
  assert process.returncode == -signal.SIGKILL and not (workdir / "model").exists(), output
  resumed = subprocess.run(_command(workdir, 10), capture_output=True, text=True, env=environment, cwd=tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from the checkpoint at step" in resumed.stderr
  for a, b in zip(_params(tmp_path / "straight" / "model"), _params(workdir / "model"), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lalrm")
  assert cli.main(["train", "lalrm", "--config", "lalrm_tiny", "--workdir", str(workdir),
                   "--config.train.steps=4", *TINY[:-2], "--config.train.eval_every=4",
                   "--config.data.num_eval_scenes=2"]) == 0
  return workdir


def test_train_writes_model_metrics_and_eval(trained):
  lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if "loss" in line] == [2, 4]
  evaluation = [line for line in lines if "eval/psnr" in line]
  assert evaluation and {"eval/ssim", "eval/baseline_psnr"} <= set(evaluation[0])
  assert checkpoints.read_description(trained / "model")[0] == "lalrm"
  assert checkpoints.read_description(trained / "vae")[0] == "cogvideox_vae"


def test_reconstruct_and_render(trained, tmp_path):
  data = tmp_path / "video"
  name = write_synthetic_dataset(data, 1, seed=5, height=32, width=32, num_frames=9)[0]
  out = tmp_path / "scene.ply"
  assert cli.main(["reconstruct", "--model", str(trained / "model"), "--video", str(data / "frames" / name),
                   "--cameras", str(data / "poses" / f"{name}.txt"), "--out", str(out), "--render",
                   str(tmp_path / "input_path.mp4")]) == 0
  scene = load_ply(out)
  assert scene.num == 9 * 16 * 16  # one Gaussian per 2x2 pixels of every frame
  assert (tmp_path / "input_path.mp4").stat().st_size > 0
  assert cli.main(["render", "--ply", str(out), "--trajectory", "orbit", "--frames", "3", "--size", "32x32",
                   "--out", str(tmp_path / "orbit.mp4")]) == 0


def test_prepare_latents_then_train_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  assert cli.main(["prepare-latents", "--config", "lalrm_tiny", "--out", str(cache), "--num-clips", "4",
                   "--shard-size", "2"]) == 0
  assert json.loads((cache / "index.json").read_text())
  assert cli.main(["train", "lalrm", "--config", "lalrm_tiny", "--workdir", str(tmp_path / "run"),
                   "--config.train.steps=2", *TINY, "--config.data.source=latents", f"--config.data.root={cache}",
                   "--config.data.encode_frames=False"]) == 0
  assert (tmp_path / "run" / "model").is_dir()


def test_errors_name_the_flag(tmp_path, capsys):
  assert cli.main(["train", "lalrm", "--config", "lalrm_tiny", "--workdir", str(tmp_path),
                   "--config.train.stepz=3"]) == 2
  assert 'Did you mean "steps"' in capsys.readouterr().err
  assert cli.main(["train", "lalrm", "--config", "no_such_config", "--workdir", str(tmp_path)]) == 2
  assert "no_such_config: no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["render", "--ply", "x.ply", "--config.train.steps=3"])


def test_train_a_tiny_vae_and_use_it_for_the_lalrm(tmp_path):
  vae_run = tmp_path / "vae"
  assert cli.main(["train", "vae", "--config", "vae_tiny", "--workdir", str(vae_run), "--config.train.steps=2",
                   "--config.train.batch_size=2", "--config.train.eval_every=2", "--config.data.num_eval_scenes=2",
                   "--config.model.block_out_channels=(8, 8, 8, 8)"]) == 0
  lines = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
  assert {"mse", "kl", "psnr"} <= set(lines[0]) and any("eval/psnr" in line for line in lines)
  lalrm_run = tmp_path / "lalrm"
  assert cli.main(["train", "lalrm", "--config", "lalrm_tiny", "--workdir", str(lalrm_run), "--config.train.steps=2",
                   *TINY, f"--config.vae.checkpoint={vae_run / 'model'}"]) == 0
  assert not (lalrm_run / "vae").exists()  # the configured VAE is used, not exported again
  assert default_vae_directory(lalrm_run / "model") == vae_run / "model"
