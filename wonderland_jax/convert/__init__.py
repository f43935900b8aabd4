"""Importing public diffusers checkpoints (safetensors) into our NNX models.

    report = convert("vae", "CogVideoX-5b", "ckpt/vae", dtype="bfloat16")   # or `wonderland convert vae ...`
    model = wonderland_jax.checkpoints.load("ckpt/vae")

`CONVERTERS` maps a model name to a `Converter`: where its weights live in a pipeline (`subfolder`), how to
turn the source's config.json into our model config (`config_from_source`), the rule table that maps tensor
names onto our params (`rules`, see `wonderland_jax.convert.rules`), the builder of our model (`build`) and
the checkpoint kind it is saved as (`kind`, registered with `wonderland_jax.checkpoints.register_model`).
The built-in entries are "module:attribute" strings, imported the first time `get_converter(name)` asks for
them, so importing this package imports no model.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.convert.rules import ConversionError, ConversionReport, Rule, convert_state
from wonderland_jax.convert.safetensors_io import TensorSource, describe, open_source
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.outputs import check_free_space

logger = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Converter:
  """How to import one model.

  name: the CLI name (`wonderland convert <name>`); kind: the checkpoint kind (`checkpoints.register_model`);
  subfolder: the model's folder in a pipeline root (e.g. "vae"), or None; config_from_source: source
  config.json dict -> our JSON-serialisable config (raise `WonderlandError` / KeyError for an unusable one);
  rules: the rule table, or a function of our config giving it (when layouts differ between versions under
  the same key names); build: (config, rngs) -> nnx.Module, the same builder as registered for `kind`.
  """

  name: str
  kind: str
  subfolder: str | None
  config_from_source: Callable[[dict], dict]
  rules: Sequence[Rule] | Callable[[dict], Sequence[Rule]]
  build: Callable[[dict, nnx.Rngs], nnx.Module]


# name -> its Converter, or the "module:attribute" holding it (imported on first use, see `get_converter`).
CONVERTERS: dict[str, Converter | str] = {
  "vae": "wonderland_jax.convert.cogvideox_vae:CONVERTER",
  "transformer": "wonderland_jax.convert.cogvideox_transformer:CONVERTER",
  "text_encoder": "wonderland_jax.convert.t5:CONVERTER",
}


def get_converter(name: str) -> Converter:
  """The `Converter` registered as `name`, importing its module the first time; `WonderlandError` listing the
  known names for an unknown one."""
  if name not in CONVERTERS:
    raise WonderlandError(f"unknown model {name!r} to convert; known: {', '.join(sorted(CONVERTERS)) or '(none)'}")
  entry = CONVERTERS[name]
  if isinstance(entry, str):
    module, _, attribute = entry.partition(":")
    entry = CONVERTERS[name] = getattr(importlib.import_module(module), attribute)
  return entry


def _source_and_config(converter: Converter, src) -> tuple[TensorSource, dict]:
  source = open_source(src, converter.subfolder)
  try:
    return source, converter.config_from_source(source.config)
  except InputFileError:
    raise
  except WonderlandError as e:  # a field the model refuses
    raise InputFileError(f"{source.config_path}: {e}") from None
  except (KeyError, TypeError, ValueError) as e:
    raise InputFileError(f"{source.config_path}: cannot make a {converter.name} config from it: {e!r}") from e


def load_converted(name: str, src: str | os.PathLike, *, dtype: Any = "float32",
                   overrides: dict | None = None) -> nnx.Module:
  """The `name` model of a diffusers folder `src`, converted in memory (nothing written): the tensors are read
  one at a time, cast to `dtype` and placed as they are converted, so host memory peaks near one copy of the
  model in `dtype`. overrides: model-config fields to build it with (`Compute.overrides`, e.g. attention)."""
  converter = get_converter(name)
  dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else jnp.dtype(dtype)
  source, config = _source_and_config(converter, src)
  config = {**config, **{key: value for key, value in (overrides or {}).items() if key in config}}
  abstract = checkpoints.abstract_model(converter.build, config)
  rules = converter.rules(config) if callable(converter.rules) else converter.rules
  state, report = convert_state(source, rules, abstract, dtype=dtype, progress_desc=f"convert {name}")
  logger.info("converted %s in memory from %s: %d parameters, %.1fs", name, source.path, report.num_params,
              report.elapsed_s)
  return checkpoints.instantiate(converter.build, config, state)


def convert(name: str, src: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
            dtype: Any = "float32") -> ConversionReport:
  """Converts the `name` model found in `src` (a model folder or a pipeline root) into a checkpoint at `out`.

  `out` is checked first (it must not exist unless `overwrite`, and then must be a checkpoint or empty), before
  anything is read. The weights are checked against the model built from the converted config (one
  `ConversionError` lists every problem), converted to `dtype` ("float32", "bfloat16" or a jnp dtype) and
  saved with `checkpoints.save`; nothing is left at `out` on failure. Returns the `ConversionReport`.
  """
  converter = get_converter(name)
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise WonderlandError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    dtype = DTYPES[dtype]
  checkpoints.check_output(out, overwrite)
  source, config = _source_and_config(converter, src)
  abstract = checkpoints.abstract_model(converter.build, config)
  size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  check_free_space(out, 1.05 * size * np.dtype(dtype).itemsize)  # before minutes of reading
  rules = converter.rules(config) if callable(converter.rules) else converter.rules
  state, report = convert_state(source, rules, abstract, dtype=dtype, progress_desc=f"convert {name}")
  metadata = {"converter": name, "source": describe(source), "report": report.to_json()}
  checkpoints.save(out, state, kind=converter.kind, config=config, overwrite=overwrite, metadata=metadata)
  logger.info("converted %s: %d parameters in %d tensors (source %s -> %s), max rounding error %.3g, %.1fs; "
              "wrote %s", name, report.num_params, report.num_tensors, "/".join(report.source_dtypes),
              report.dtype, report.max_rounding_error, report.elapsed_s, out)
  return report


__all__ = ["CONVERTERS", "ConversionError", "ConversionReport", "Converter", "Rule", "TensorSource", "convert",
           "convert_state", "get_converter", "load_converted", "open_source"]
