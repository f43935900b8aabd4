"""A toy linear-regression task for the training-loop tests (fast: a 3 -> 1 linear layer)."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.train.loop import Task

TRUE_WEIGHTS = np.array([[1.5], [-2.0], [0.5]], np.float32)


def config(**train) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=0,
      train=dict(dict(steps=20, batch_size=4, grad_accum=1, log_every=5, checkpoint_every=5, keep_checkpoints=2,
                      eval_every=0, nonfinite="skip", async_checkpoints=True), **train),
      optimizer=dict(learning_rate=0.1, warmup_steps=2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0,
                     clip_norm=1.0, final_lr_fraction=0.1)))


def _example(index):
  rng = np.random.default_rng(index)
  x = rng.normal(size=(3,)).astype(np.float32)
  return {"x": x, "y": x @ TRUE_WEIGHTS, "index": np.int32(index)}


class Model(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.backbone = nnx.Linear(3, 3, rngs=rngs)
    self.head = nnx.Linear(3, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(self.backbone(x))


def task(nan_at_step: int = -1, frozen_backbone: bool = False) -> Task:
  def loss_fn(model, batch, key):
    prediction = model(batch["x"]) + 1e-3 * jax.random.normal(key, batch["y"].shape)
    loss = jnp.mean((prediction - batch["y"]) ** 2)
    # A NaN in the data of one step (examples 4 * nan_at_step ...), to exercise the non-finite handling.
    loss = jnp.where(jnp.any(batch["index"] // 4 == nan_at_step), jnp.nan, loss)
    return loss, {"mean_abs_error": jnp.mean(jnp.abs(prediction - batch["y"]))}

  def make_iterator(config):
    dataset = grain.MapDataset.range(10**6).map(_example).batch(int(config.train.batch_size))
    return iter(dataset.to_iter_dataset())

  def export(model, config, directory):
    checkpoints.save(directory, model, kind="toy", config={}, overwrite=True)

  trainable = nnx.All(nnx.Param, nnx.PathContains("head")) if frozen_backbone else nnx.Param
  return Task(name="toy", build_model=lambda config, rngs: Model(rngs), loss_fn=loss_fn,
              make_iterator=make_iterator, trainable=trainable, export=export)

