"""Issue 15's guarantees (docs/reliability.md): every failure is one line, exit 2 (75 / 130 for a preempted /
interrupted run), and leaves the user's files as they were. One test per defect the issue lists, then a
property-style sweep of bad inputs over the CLI commands."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import train_toy as toy
from tests.helpers.gaussians import to_gaussians
from tests.helpers.splat_reference import random_scene
from wonderland_jax import cli, outputs
from wonderland_jax.errors import InputFileError, OutputError, WonderlandError
from wonderland_jax.io_utils import write_png
from wonderland_jax.models.vae import VAEConfig
from wonderland_jax.splat import save_ply
from wonderland_jax.train.loop import check_config, train
from wonderland_jax.train.workdir import LOCK, WorkdirLock

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict:
  """Every file below `root` with its bytes (what a failed command must leave unchanged)."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _scene(tmp_path: Path, name="scene.ply", *, nan=False, num=64) -> Path:
  gaussians = to_gaussians(random_scene(np.random.default_rng(0), num))
  if nan:
    gaussians = gaussians.replace(means=gaussians.means.at[::3].set(jnp.nan))
  save_ply(tmp_path / name, gaussians)
  return tmp_path / name


def _run(capsys, argv) -> tuple[int, str]:
  status = cli.main([str(a) for a in argv])
  return status, capsys.readouterr().err


# 1. --overwrite deletes any directory.
def test_overwrite_replaces_only_directories_wonderland_wrote(tmp_path, capsys):
  victim = tmp_path / "victim"
  (victim / "docs").mkdir(parents=True)
  (victim / "docs" / "thesis.tex").write_text("years of work")
  for argv in (["demo", "--out", victim, "--overwrite", "--steps", "1"],
               ["prepare-latents", "--config", "lalrm_tiny", "--out", victim, "--overwrite", "--num-clips", "1"]):
    status, err = _run(capsys, argv)
    assert status == 2 and "not written by wonderland" in err and "refusing to replace it" in err, err
  assert (victim / "docs" / "thesis.tex").read_text() == "years of work"
  with outputs.atomic_directory(tmp_path / "ours") as staging:
    (staging / "a.txt").write_text("1")
  assert json.loads((tmp_path / "ours" / outputs.MANIFEST).read_text())["files"] == ["a.txt"]
  outputs.check_output_directory(tmp_path / "ours", overwrite=True)  # ours: may be replaced
  with pytest.raises(WonderlandError, match="pass --overwrite"):
    outputs.check_output_directory(tmp_path / "ours", overwrite=False)


# 2. A full disk or a failed encoder: no truncated video renamed over the target, never exit 0.
def test_full_disk_video_is_an_error_and_keeps_the_old_file(tmp_path):
  target = tmp_path / "b.mp4"
  target.write_bytes(b"the good video")
  script = textwrap.dedent("""
      import resource, signal, sys
      import numpy as np
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead of a kill
      resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
      from wonderland_jax.errors import WonderlandError
      from wonderland_jax.io_utils import write_video
      try:
        write_video(sys.argv[1], np.random.default_rng(0).uniform(0, 1, (40, 256, 256, 3)), fps=8)
      except WonderlandError as error:
        print(error)
        sys.exit(2)
      """)
  result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
  assert result.returncode == 2, result.stdout + result.stderr
  assert str(target) in result.stdout and "Traceback" not in result.stderr
  assert target.read_bytes() == b"the good video"
  assert [p.name for p in tmp_path.iterdir()] == ["b.mp4"]


def _toy_run(workdir: Path, steps: int, **train_options):
  return train(toy.task(), toy.config(steps=steps, **train_options), workdir)


# 3. A corrupted newest checkpoint blocks resuming although older ones are intact.
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_readable(tmp_path, caplog):
  workdir = tmp_path / "run"
  _toy_run(workdir, 10, keep_checkpoints=3)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10]
  for path in (workdir / "checkpoints" / "10" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
  (workdir / "checkpoints" / "10" / "state" / "_METADATA").unlink(missing_ok=True)
  result = _toy_run(workdir, 15, keep_checkpoints=3)
  assert result.step == 15 and result.status == "finished"
  assert "the checkpoint at step 10 cannot be read" in caplog.text
  assert "resuming from the checkpoint at step 5" in caplog.text
  assert (workdir / "unreadable_checkpoints" / "10").is_dir()
  # Nothing readable: one error that does not advise throwing the workdir away.
  for step in (workdir / "checkpoints").iterdir():
    if step.name.isdigit():
      for path in (step / "state").rglob("*"):
        if path.is_file():
          path.write_bytes(b"\0")
  with pytest.raises(WonderlandError, match="no checkpoint can be restored") as caught:
    _toy_run(workdir, 20, keep_checkpoints=3)
  assert "fresh --workdir" not in str(caught.value)


# 4. keep_checkpoints=0 keeps nothing; 10. checkpoint_every=0, grad_accum=0; 6. learning_rate=nan.
@pytest.mark.parametrize("override, flag", [
    ("keep_checkpoints=0", "--config.train.keep_checkpoints=0"),
    ("checkpoint_every=0", "--config.train.checkpoint_every=0"),
    ("grad_accum=0", "--config.train.grad_accum=0"),
    ("log_every=0", "--config.train.log_every=0"),
    ("learning_rate=nan", "--config.optimizer.learning_rate=nan"),
    ("learning_rate=-1.0", "--config.optimizer.learning_rate=-1.0"),
])
def test_training_settings_no_run_can_use_are_refused_up_front(override, flag):
  name, value = override.split("=")
  config = toy.config()
  if name == "learning_rate":
    config.optimizer.learning_rate = float(value)
  else:
    config.train[name] = int(value)
  with pytest.raises(WonderlandError, match=flag.replace(".", r"\.").replace("-", r"\-")):
    check_config(config)


# 5. No workdir lock.
def test_a_second_run_on_a_held_workdir_is_refused(tmp_path, caplog):
  workdir = tmp_path / "run"
  with WorkdirLock(workdir):
    holder = json.loads((workdir / LOCK).read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    with pytest.raises(WonderlandError, match="in use by another run .* pass --force"):
      _toy_run(workdir, 5)
    assert not (workdir / "checkpoints").exists()  # refused before any work
  # A crashed run's lock (its process is gone) is taken over; the lock is removed when the run ends.
  (workdir / LOCK).write_text(json.dumps({"host": holder["host"], "pid": _dead_pid(), "started": "x", "argv": []}))
  assert _toy_run(workdir, 5).step == 5
  assert "taking over the lock" in caplog.text and not (workdir / LOCK).exists()


def test_two_concurrent_training_processes_cannot_share_a_workdir(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from wonderland_jax.train.workdir import WorkdirLock
      with WorkdirLock({str(workdir)!r}):
        print("held", flush=True)
        time.sleep(120)
      """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WonderlandError, match=f"pid {holder.pid}"):
      _toy_run(workdir, 5)
    assert _toy_run_forced(workdir).step == 5  # --force takes over
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()


def _toy_run_forced(workdir: Path):
  return train(toy.task(), toy.config(steps=5), workdir, force=True)


# 6. Non-finite params slip through; a run that skips every step ends 0 with no summary.
def test_a_run_that_keeps_skipping_updates_stops_with_a_summary(tmp_path):
  config = toy.config(steps=20)
  config.optimizer.learning_rate = 1e30  # the params overflow within a few steps
  with pytest.raises(WonderlandError, match=r"updates skipped .* Lower --config\.optimizer\.learning_rate"):
    train(toy.task(), config, tmp_path / "run")
  assert not (tmp_path / "run" / "model").exists()


# 7. NaN in, black out; 10. an empty .ply; 8. outputs that cannot be written; 9. multi-output commands.
def test_nan_empty_and_degenerate_inputs_are_refused_by_name(tmp_path):
  gaussians = to_gaussians(random_scene(np.random.default_rng(0), 10))
  with pytest.raises(WonderlandError, match="scene.ply"):
    gaussians.replace(scales=gaussians.scales.at[0].set(-1.0)).check_values("scene.ply")
  empty = jax.tree.map(lambda x: x[:0], gaussians)
  with pytest.raises(WonderlandError, match="empty"):
    empty.check_values("empty.ply")


def test_a_failure_during_the_work_leaves_every_output_as_it_was(tmp_path, capsys, monkeypatch):
  scene = _scene(tmp_path)
  video = tmp_path / "orbit.mp4"
  video.write_bytes(b"the old video")

  def full_disk(directory, frames):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(cli, "write_png_sequence", full_disk)
  before = _tree(tmp_path)
  status, err = _run(capsys, ["render", "--ply", scene, "--frames", "2", "--size", "32x32", "--out", video,
                              "--png-dir", tmp_path / "frames"])
  assert status == 2 and "no space left on device" in err and len(err.strip().splitlines()) == 1, err
  assert _tree(tmp_path) == before and not (tmp_path / "frames").exists()


def test_stale_staging_of_dead_processes_is_cleaned_and_live_ones_kept(tmp_path):
  host = outputs.staging_path(tmp_path / "x").name.split("-")[1]
  dead = tmp_path / f".b.mp4.tmp-{host}-{_dead_pid()}-deadbeef.mp4"
  live = tmp_path / f".c.mp4.tmp-{host}-{os.getpid()}-deadbeef.mp4"
  dead.write_bytes(b"partial")
  live.write_bytes(b"in progress")
  outputs.clean_stale(tmp_path)
  assert not dead.exists() and live.exists()


def test_errors_are_at_most_two_lines_and_configs_are_checked_by_field(tmp_path):
  assert cli._short("a\nb\nc\nd", verbose=False) == "a\nb (2 more lines with -v)"
  assert cli._short("a\nb\nc\nd", verbose=True) == "a\nb\nc\nd"
  for field, value in (("norm_num_groups", 0), ("norm_num_groups", 3), ("latent_channels", None)):
    with pytest.raises(WonderlandError, match=f"vae/config.json: {field}"):
      VAEConfig.from_diffusers({"block_out_channels": [32, 32], "down_block_types": ["CogVideoXDownBlock3D"] * 2,
                                "up_block_types": ["CogVideoXUpBlock3D"] * 2, field: value},
                               where="vae/config.json")


def _write_pose_file(path: Path, fx: float) -> Path:
  frames = [{"file_path": f"{i}.png", "transform_matrix": np.eye(4).tolist()} for i in range(3)]
  path.write_text(json.dumps({"fl_x": fx, "fl_y": 20.0, "cx": 16, "cy": 16, "w": 32, "h": 32, "frames": frames}))
  return path


def _bad_invocations(tmp_path: Path) -> list[tuple[str, list]]:
  """(what, argv) pairs every one of which must exit 2 with one line and no traceback, changing nothing."""
  scene, nan_scene = _scene(tmp_path), _scene(tmp_path, "nan.ply", nan=True)
  empty = tmp_path / "empty.ply"
  save_ply(empty, jax.tree.map(lambda x: x[:0], to_gaussians(random_scene(np.random.default_rng(1), 10))))
  blocker = tmp_path / "afile"
  blocker.write_text("a file where a directory is expected")
  (tmp_path / "existing.mp4").mkdir()
  image = tmp_path / "in.png"
  write_png(image, np.zeros((8, 8, 3)))
  zero_fx = _write_pose_file(tmp_path / "transforms.json", 0.0)
  render = ["render", "--ply", scene, "--frames", "2", "--size", "32x32"]
  return [
      ("NaN means", ["render", "--ply", nan_scene, "--out", tmp_path / "a.mp4"]),
      ("an empty ply", ["render", "--ply", empty, "--start", "identity", "--out", tmp_path / "a.mp4"]),
      ("fov 0", [*render, "--fov", "0", "--out", tmp_path / "a.mp4"]),
      ("fov 180", [*render, "--fov", "180", "--out", tmp_path / "a.mp4"]),
      ("background nan", [*render, "--background", "nan,nan,nan", "--out", tmp_path / "a.mp4"]),
      ("param nan", [*render, "--param", "radius=nan", "--out", tmp_path / "a.mp4"]),
      ("fps 0", [*render, "--fps", "0", "--out", tmp_path / "a.mp4"]),
      ("fps negative", [*render, "--fps", "-3", "--out", tmp_path / "a.mp4"]),
      ("fx 0 poses", [*render, "--trajectory", zero_fx, "--out", tmp_path / "a.mp4"]),
      ("--out is a directory", [*render, "--out", tmp_path / "existing.mp4"]),
      ("--out under a file", [*render, "--out", blocker / "a.mp4"]),
      ("--png-dir under a file", [*render, "--out", tmp_path / "a.mp4", "--png-dir", blocker / "frames"]),
      ("sample --latents under a file", ["sample", "--model", tmp_path / "no_model", "--image", image, "--prompt",
                                         "x", "--out", tmp_path / "a.mp4", "--latents", blocker / "a.npz"]),
      ("reconstruct --render under a file", ["reconstruct", "--model", tmp_path / "no_model", "--video", image,
                                             "--cameras", zero_fx, "--out", tmp_path / "s.ply", "--render",
                                             blocker / "r.mp4"]),
      ("generate-video guidance nan", ["generate-video", "--model", "m", "--branch", "b", "--image", image,
                                       "--trajectory", "orbit", "--guidance", "nan", "--out", tmp_path / "a.mp4"]),
      ("plan --json under a file", ["plan", "--config", "lalrm_tiny", "--mesh", "fsdp=1", "--json",
                                    blocker / "plan.json"]),
      ("plan --mfu 0", ["plan", "--config", "lalrm_tiny", "--mesh", "fsdp=1", "--mfu", "0"]),
      ("train into a file", ["train", "lalrm", "--config", "lalrm_tiny", "--workdir", blocker]),
      ("train keep_checkpoints=0", ["train", "lalrm", "--config", "lalrm_tiny", "--workdir", tmp_path / "w",
                                    "--config.train.keep_checkpoints=0"]),
      ("train learning_rate=nan", ["train", "lalrm", "--config", "lalrm_tiny", "--workdir", tmp_path / "w",
                                   "--config.optimizer.learning_rate=nan"]),
      ("an unknown flag", ["render", "--ply", scene, "--bogus"]),
  ]


def test_bad_inputs_to_every_command_exit_2_in_one_line_and_change_nothing(tmp_path, capsys):
  cases = _bad_invocations(tmp_path)
  before = _tree(tmp_path)
  for what, argv in cases:
    try:
      status = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
      status = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[wonderland]")]
    assert status == 2, (what, status, err)
    assert "Traceback" not in err and len(lines) == 1, (what, err)
    assert _tree(tmp_path) == before, what
  assert not (tmp_path / "w").exists() and not (tmp_path / "a.mp4").exists()


def test_reading_a_checkpoint_of_the_wrong_kind_names_both_kinds(tmp_path):
  from wonderland_jax import checkpoints  # noqa: PLC0415
  train(toy.task(), toy.config(steps=1), tmp_path / "run")
  with pytest.raises(InputFileError, match="'toy' checkpoint; expected 'lalrm'"):
    checkpoints.load(tmp_path / "run" / "model", kind="lalrm")
  with pytest.raises(OutputError, match="is a file"):
    train(toy.task(), toy.config(steps=1), tmp_path / "run" / "config.json")


# 8. A failed checkpoint save: one error at once, the last complete checkpoint kept, no partial temporaries.
def test_a_failed_checkpoint_save_stops_the_run_at_once(tmp_path, monkeypatch):
  from wonderland_jax.train import loop  # noqa: PLC0415
  real_save, calls = loop._save, []

  def save(manager, step, *args, **kwargs):
    calls.append(step)
    if step == 10:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(manager, step, *args, **kwargs)

  monkeypatch.setattr(loop, "_save", save)
  with pytest.raises(OutputError, match="saving a checkpoint failed: no space left on device"):
    _toy_run(tmp_path / "run", 20)
  assert calls == [5, 10]  # stopped at the failing save, not at the next one
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["5"]
  assert not list((tmp_path / "run" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
  assert not (tmp_path / "run" / LOCK).exists()
