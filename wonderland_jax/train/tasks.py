"""The trainable models by name: `wonderland train <name>` and `wonderland plan` look them up here.

    task = make_task("camera-dit", config)
    planned = planning_config("camera-dit", config)   # random weights of the same shapes: no files read
"""

from __future__ import annotations

import importlib

import ml_collections

from wonderland_jax.errors import WonderlandError

# name -> (module, task factory, planning-config function or None)
TASKS = {
    "lalrm": ("wonderland_jax.train.lalrm", "lalrm_task", "planning_config"),
    "vae": ("wonderland_jax.train.vae", "vae_task", None),
    "camera-dit": ("wonderland_jax.train.camera_dit", "camera_dit_task", "planning_config"),
}


# The config keys of each model's depth, for extrapolated plans (`train.plan.plan_extrapolated`): the first is
# the number of blocks, the others keep their ratio to it.
DEPTH_KEYS = {
    "lalrm": ("model.num_layers",),
    "camera-dit": ("base.random_config.num_layers", "camera.controlnet_layers"),
}


def _module(name: str):
  if name not in TASKS:
    raise WonderlandError(f"unknown model {name!r}; one of {sorted(TASKS)}")
  return importlib.import_module(TASKS[name][0])


def make_task(name: str, config: ml_collections.ConfigDict):
  return getattr(_module(name), TASKS[name][1])(config)


def planning_config(name: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every weight file replaced by random weights of the same shapes (for ahead-of-time plans)."""
  function = TASKS[name][2]
  return config if function is None else getattr(_module(name), function)(config)


def task_name(config: ml_collections.ConfigDict) -> str:
  """Which model a training config is for: `config.task` when set, else by its sections (camera -> camera-dit,
  render -> lalrm, else vae)."""
  if config.get("task"):
    return str(config.task)
  if "camera" in config:
    return "camera-dit"
  if "render" in config:
    return "lalrm"
  return "vae"
