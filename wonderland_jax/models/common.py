"""Helpers shared by the model families' configs."""

from __future__ import annotations

import dataclasses

from wonderland_jax.errors import WonderlandError


def config_values(cls, config: dict, what: str, **overrides) -> dict:
  """The fields of the frozen config dataclass `cls` from a JSON dict: private `_...` keys (diffusers'
  `_class_name`, ...) are dropped, unknown keys are an error naming them, `overrides` win."""
  fields = {field.name for field in dataclasses.fields(cls)}
  values = {key: value for key, value in config.items() if not key.startswith("_")}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise WonderlandError(f"{what} config: unknown field(s) {', '.join(unknown)}")
  return {**values, **overrides}
