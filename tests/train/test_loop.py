"""The shared training loop on a toy task: learning, exact resume after preemption, non-finite steps,
frozen params, gradient accumulation, metrics files."""

import dataclasses
import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import train_toy as toy
from wonderland_jax.errors import WonderlandError
from wonderland_jax.train.loop import train


def _params(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _assert_same(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


class _SigtermAfter:
  """Wraps a data iterator; sends this process SIGTERM when batch `count` is drawn."""

  def __init__(self, iterator, count):
    self.iterator, self.count, self.drawn = iterator, count, 0

  def __next__(self):
    self.drawn += 1
    if self.drawn == self.count:
      os.kill(os.getpid(), signal.SIGTERM)
    return next(self.iterator)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def test_learns_and_writes_metrics(tmp_path):
  result = train(toy.task(), toy.config(steps=60), tmp_path)
  assert result.status == "finished" and result.step == 60
  assert result.last_metrics["loss"] < 0.05
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == list(range(5, 61, 5))
  assert lines[-1]["loss"] < lines[0]["loss"] / 10
  assert {"grad_norm", "learning_rate", "steps_per_second", "mean_abs_error"} <= set(lines[-1])
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [55, 60]
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 60
  assert (tmp_path / "model" / "wonderland_model.json").exists()


def test_sigterm_saves_and_the_rerun_continues_exactly(tmp_path):
  straight = train(toy.task(), toy.config(steps=20), tmp_path / "straight")
  task = toy.task()
  interrupted_task = dataclasses.replace(
      task, make_iterator=lambda config: _SigtermAfter(task.make_iterator(config), 8))
  stopped = train(interrupted_task, toy.config(steps=20), tmp_path / "split")
  assert stopped.status == "preempted" and stopped.step == 8
  assert (tmp_path / "split" / "checkpoints" / "8").is_dir()  # saved at the step, off the 5-step cadence
  assert not (tmp_path / "split" / "model").exists()
  resumed = train(task, toy.config(steps=20), tmp_path / "split")
  assert resumed.status == "finished" and resumed.step == 20
  _assert_same(_params(straight.model), _params(resumed.model))
  # A finished run started again does nothing more.
  again = train(task, toy.config(steps=20), tmp_path / "split")
  _assert_same(_params(again.model), _params(resumed.model))


def test_nonfinite_steps_are_skipped_or_stop(tmp_path, caplog):
  result = train(toy.task(nan_at_step=3), toy.config(steps=10), tmp_path / "skip")
  assert result.skipped_steps == 1
  assert "step 4: non-finite loss" in caplog.text
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(result.model)))
  with pytest.raises(WonderlandError, match="step 4: non-finite loss.*stopping"):
    train(toy.task(nan_at_step=3), toy.config(steps=10, nonfinite="stop"), tmp_path / "stop")
  # The checkpoint before the bad step is intact and usable.
  assert (tmp_path / "stop" / "checkpoints").is_dir()


def test_frozen_params_get_no_update_and_no_optimizer_state(tmp_path):
  task = toy.task(frozen_backbone=True)
  initial = _params(task.build_model(toy.config(), nnx.Rngs(0)))
  result = train(task, toy.config(steps=10), tmp_path)
  final = _params(result.model)
  _assert_same(initial["backbone"], final["backbone"])
  assert not np.allclose(initial["head"]["kernel"], final["head"]["kernel"])
  saved = [p.name for p in (tmp_path / "checkpoints" / "10" / "state").rglob("*")]
  assert not any("backbone" in name for name in saved)


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
  one = train(toy.task(), toy.config(steps=5, batch_size=4), tmp_path / "one")
  accumulated = train(toy.task(), toy.config(steps=5, batch_size=4, grad_accum=2), tmp_path / "two")
  for a, b in zip(jax.tree.leaves(_params(one.model)), jax.tree.leaves(_params(accumulated.model))):
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)  # the per-micro-batch noise keys differ
  with pytest.raises(WonderlandError, match="batch_size=4 is not divisible by --config.train.grad_accum=3"):
    train(toy.task(), toy.config(steps=5, batch_size=4, grad_accum=3), tmp_path / "three")
