"""Model checkpoints: the nnx.Params of a model in Orbax format, plus the kind and config to rebuild it.

    save("ckpt/vae", model_or_params, kind="cogvideox_vae", config=config)
    model = load("ckpt/vae")                                         # on the default device
    model = load("ckpt/vae", mesh=mesh, rules=[("mlp", "tensor")])   # sharded by logical axis names

A checkpoint directory holds

    wonderland_model.json   {"format": 1, "kind": ..., "config": {...}, "metadata": {...} or null}
    params/                 Orbax (StandardCheckpointer) checkpoint of the nnx.Param state as a pure dict
                            pytree, e.g. {'encoder': {'down_blocks': {0: {'conv': {'kernel': array}}}}}

Models are rebuilt from (kind, config) through a registry: a model module calls
`register_model(kind, build)` with `build(config: dict, rngs: nnx.Rngs) -> nnx.Module`. Kinds whose module is
known (`KNOWN_KINDS`) are imported on first use, so `load` works without importing the model module first.

`save` writes everything into a hidden sibling directory renamed onto the target at the end: a failure leaves
nothing behind, and `overwrite=True` replaces an existing checkpoint only once the new one is complete.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from flax.core import spmd
from jax.sharding import NamedSharding, PartitionSpec

from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.nn.abstract import abstract_build, cheap_tracer_errors
from wonderland_jax.nn.partitioning import LogicalRules, default_sharding, param_sharding
from wonderland_jax.outputs import atomic_directory, check_writable

logger = logging.getLogger(__name__)

FORMAT = 1
MODEL_JSON = "wonderland_model.json"
PARAMS_DIR = "params"
POSE_NORMALIZATION = "pose_normalization"  # metadata key: {"scale_mode", "scale_target", "scale_floor"}
# kind -> module whose import registers it.
KNOWN_KINDS: dict[str, str] = {"cogvideox_vae": "wonderland_jax.models.vae",
                               "cogvideox_transformer": "wonderland_jax.models.dit",
                               "t5_encoder": "wonderland_jax.models.t5",
                               "lalrm": "wonderland_jax.models.lalrm",
                               "camera_dit": "wonderland_jax.models.camera_dit"}
ModelBuilder = Callable[[dict, nnx.Rngs], nnx.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(kind: str, build: ModelBuilder) -> None:
  """Registers `build(config, rngs) -> nnx.Module` as the way to rebuild checkpoints of `kind`."""
  if kind in _BUILDERS and _BUILDERS[kind] is not build:
    logger.debug("model kind %r re-registered", kind)
  _BUILDERS[kind] = build


def known_kinds() -> list[str]:
  return sorted(set(_BUILDERS) | set(KNOWN_KINDS))


def model_builder(kind: str) -> ModelBuilder:
  """The builder registered for `kind`, importing its module first if it is a known kind.

  Raises `WonderlandError` listing the known kinds for an unknown kind or one whose module is missing."""
  if kind not in _BUILDERS and kind in KNOWN_KINDS:
    module = KNOWN_KINDS[kind]
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name is None or not module.startswith(e.name):
        raise  # The module exists but one of its imports does not: a broken install, not an unknown kind.
      raise WonderlandError(f"model kind {kind!r} needs {module}, which is not available ({e}); "
                            f"known kinds: {', '.join(known_kinds())}") from None
  if kind not in _BUILDERS:
    raise WonderlandError(f"unknown model kind {kind!r}; known kinds: {', '.join(known_kinds()) or '(none)'}")
  return _BUILDERS[kind]


def _builder(kind_or_build: str | ModelBuilder) -> ModelBuilder:
  return model_builder(kind_or_build) if isinstance(kind_or_build, str) else kind_or_build


def abstract_model(kind_or_build: str | ModelBuilder, config: dict) -> nnx.Module:
  """The model with `jax.ShapeDtypeStruct` values instead of arrays (nothing allocated or initialised).

  Built with eager sharding off, so params annotated with `nnx.with_partitioning` need no mesh here."""
  build = _builder(kind_or_build)
  return abstract_build(lambda: build(config, nnx.Rngs(0)))


def _other_state(build: ModelBuilder, config: dict, abstract: nnx.Module) -> nnx.State:
  """The non-Param variables (RNG streams, batch stats, ...) the constructor makes, computed under jit so
  that XLA drops the (unused) param initialisation; skipped when the model has none."""
  others = nnx.split(abstract, nnx.Param, ...)[2]
  if not jax.tree.leaves(others):
    return others

  def make():
    with nnx.use_eager_sharding(False):
      return nnx.split(build(config, nnx.Rngs(0)), nnx.Param, ...)[2]
  with cheap_tracer_errors():
    return jax.jit(make)()


def _as_param_state(abstract: nnx.Module, params: Any) -> nnx.State:
  """A Param state of `abstract`'s structure holding the arrays of `params` (State, Module or pure dict)."""
  given = {_dotted(p): value for p, value in _flat_pure(_pure_params(params)).items()}
  leaves = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  check_fit({_dotted(p): leaf.get_value().shape for p, leaf in leaves.items()},
            {key: np.shape(value) for key, value in given.items()}, "params do not fit the model")
  return nnx.from_flat_state([(p, leaf.replace(given[_dotted(p)])) for p, leaf in leaves.items()])


def instantiate(kind_or_build: str | ModelBuilder, config: dict, params: Any) -> nnx.Module:
  """Builds the model of `config` holding `params` (an nnx.Param State, a pure dict or a Module) without
  running the param initialisers; other variables (RNG streams, ...) come from the constructor (seed 0)."""
  build = _builder(kind_or_build)
  abstract = abstract_model(build, config)
  graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
  return nnx.merge(graphdef, _as_param_state(abstract, params), _other_state(build, config, abstract))


# Pure dict helpers --------------------------------------------------------------------------------------


def _pure_params(model_or_params: Any) -> dict:
  if isinstance(model_or_params, nnx.Module):
    return nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
  if isinstance(model_or_params, nnx.State):
    return nnx.to_pure_dict(nnx.filter_state(model_or_params, nnx.Param))
  if isinstance(model_or_params, Mapping):
    return dict(model_or_params)
  raise TypeError(f"expected an nnx.Module, an nnx.State or a pure dict of params, got "
                  f"{type(model_or_params).__name__}")


def _flat_pure(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat_pure(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _dotted(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def _listed(title: str, items: list[str], cap: int = 20) -> str:
  if not items:
    return ""
  more = f", ... ({len(items) - cap} more)" if len(items) > cap else ""
  return f"{len(items)} {title}: " + ", ".join(items[:cap]) + more


def flat_shapes(tree: Mapping) -> dict[str, tuple[int, ...]]:
  """{dotted path: shape} of the leaves of a pure dict of arrays (or of anything with a shape)."""
  return {_dotted(p): tuple(np.shape(value)) for p, value in _flat_pure(tree).items()}


def check_fit(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], what: str, *,
              error: type[WonderlandError] = WonderlandError, ignored: Sequence[str] = (),
              missing: str = "missing", unexpected: str = "unexpected",
              mismatch: str = "{key}: given {found}, model {expected}") -> None:
  """The one "these params do not fit this model" check: of checkpoints (`instantiate`, `load`), camera branch
  checkpoints and torch state_dict files (`wonderland_jax.convert.state_dict.check_keys`).

  `expected` and `found` map names (dotted paths, state_dict keys) to shapes. Unless they have the same names
  with the same shapes, raises one `error` "{what}: ..." listing every expected name `found` lacks (titled
  `missing`, with its shape), every found name not expected (titled `unexpected`, with its shape; names starting
  with an `ignored` prefix are left out) and every shape mismatch (`mismatch` formatted with key, found and
  expected), at most 20 of each.
  """
  expected = {key: tuple(int(d) for d in shape) for key, shape in expected.items()}
  found = {key: tuple(int(d) for d in shape) for key, shape in found.items()}
  absent = [f"{key} {shape}" for key, shape in expected.items() if key not in found]
  extra = [f"{key} {shape}" for key, shape in found.items()
           if key not in expected and not key.startswith(tuple(ignored))]
  wrong = [mismatch.format(key=key, found=found[key], expected=shape)
           for key, shape in expected.items() if key in found and found[key] != shape]
  if absent or extra or wrong:
    parts = (_listed(missing, absent), _listed(unexpected, extra), _listed("shape mismatch(es)", wrong))
    raise error(f"{what}: " + "; ".join(part for part in parts if part))


# Saving --------------------------------------------------------------------------------------------------


def _check_replaceable(directory: Path, overwrite: bool) -> None:
  """Raises unless `directory` may be written: absent, or (with overwrite) an empty directory or a checkpoint."""
  if not directory.exists() and not directory.is_symlink():
    return
  if not overwrite:
    raise WonderlandError(f"{directory}: already exists; pass overwrite (--overwrite) to replace it")
  if not directory.is_dir() or directory.is_symlink():
    raise WonderlandError(f"{directory}: exists and is not a directory; refusing to replace it")
  if any(directory.iterdir()) and not (directory / MODEL_JSON).is_file():
    raise WonderlandError(f"{directory}: exists and is not a wonderland checkpoint (no {MODEL_JSON}); "
                          "refusing to replace it")


def check_output(directory: str | os.PathLike, overwrite: bool = False) -> None:
  """Raises `WonderlandError` unless `save(directory, ..., overwrite=overwrite)` could write there; for
  tools that want to fail before doing any work."""
  _check_replaceable(Path(directory), overwrite)
  check_writable(Path(directory).parent)


def save(directory: str | os.PathLike, model_or_params: Any, *, kind: str, config: dict, overwrite: bool = False,
         metadata: dict | None = None) -> Path:
  """Writes a checkpoint (see the module docstring) of a model's nnx.Params; returns the directory.

  Args:
    directory: the checkpoint directory; its parent is created if needed.
    model_or_params: an nnx.Module, an nnx.State (its nnx.Params are saved) or a pure dict of arrays.
    kind: the registered model kind that rebuilds it (not checked here; `load` needs it registered).
    config: the JSON-serialisable config passed to the kind's builder.
    overwrite: replace an existing checkpoint (or empty directory) at `directory`; anything else is refused.
    metadata: JSON-serialisable extra information (source, dtype, ...).

  Raises `WonderlandError` if `directory` exists (without overwrite) or config / metadata are not JSON.
  """
  directory = Path(directory)
  _check_replaceable(directory, overwrite)
  params = _pure_params(model_or_params)
  abstract = [_dotted(p) for p, v in _flat_pure(params).items() if not hasattr(v, "dtype") or
              isinstance(v, jax.ShapeDtypeStruct)]
  if abstract:
    raise WonderlandError(f"{directory}: cannot save params without values: {', '.join(abstract[:10])}")
  try:
    description = json.dumps({"format": FORMAT, "kind": kind, "config": config, "metadata": metadata}, indent=2)
  except (TypeError, ValueError) as e:
    raise WonderlandError(f"{directory}: config / metadata are not JSON-serialisable: {e}") from e
  if jax.process_count() > 1:
    _save_multiprocess(directory, params, description)
  else:
    with atomic_directory(directory, manifest=False) as staging:  # wonderland_model.json marks it as ours
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging.absolute() / PARAMS_DIR, params)  # Orbax wants absolute paths
      (staging / MODEL_JSON).write_text(description + "\n", encoding="utf-8")
  logger.info("saved %s checkpoint to %s", kind, directory)
  return directory


def _save_multiprocess(directory: Path, params, description: str) -> None:
  """Every process writes its shards into one staging directory (an Orbax collective save); process 0 adds
  the description and renames it into place; all wait for that."""
  from jax.experimental import multihost_utils  # noqa: PLC0415
  staging = directory.with_name(f".{directory.name}.tmp-multiprocess")
  if jax.process_index() == 0:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
  multihost_utils.sync_global_devices(f"wonderland save {directory}: staging")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(staging.absolute() / PARAMS_DIR, params)
  if jax.process_index() == 0:
    (staging / MODEL_JSON).write_text(description + "\n", encoding="utf-8")
    old = directory.with_name(f".{directory.name}.old-multiprocess")
    if directory.exists():
      os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
  multihost_utils.sync_global_devices(f"wonderland save {directory}: done")


# Loading -------------------------------------------------------------------------------------------------


def read_description(directory: str | os.PathLike) -> tuple[str, dict, dict | None]:
  """(kind, config, metadata) from `directory/wonderland_model.json`; `InputFileError` naming the file."""
  directory = Path(directory)
  if not directory.is_dir():
    raise InputFileError(f"{directory}: checkpoint directory not found")
  path = directory / MODEL_JSON
  try:
    description = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise InputFileError(f"{path}: not found; {directory} is not a wonderland checkpoint") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputFileError(f"{path}: cannot read: {e}") from None
  if not isinstance(description, dict) or description.get("format") != FORMAT:
    found = description.get("format") if isinstance(description, dict) else type(description).__name__
    raise InputFileError(f"{path}: unsupported checkpoint format {found!r}; expected {FORMAT}")
  kind, config = description.get("kind"), description.get("config")
  if not isinstance(kind, str) or not isinstance(config, dict):
    raise InputFileError(f"{path}: needs a string 'kind' and an object 'config'")
  return kind, config, description.get("metadata")


def pose_normalization(directory: str | os.PathLike) -> tuple[str, float, float]:
  """(scale_mode, scale_target, scale_floor): the pose normalisation (`camera.normalize_poses`) the
  camera-conditioned model in `directory` was trained with, from its metadata's `pose_normalization` (written by
  the training exports; older exports: their `trained_with.data`); each missing entry takes its default
  ('max_distance', 1.0, `camera.DEFAULT_SCALE_FLOOR`): exports from before 'extent_floor' have no floor, and
  their modes do not read it."""
  metadata = read_description(directory)[2] or {}
  settings = metadata.get(POSE_NORMALIZATION) or metadata.get("trained_with", {}).get("data", {})
  return (settings.get("scale_mode", "max_distance"), float(settings.get("scale_target", 1.0)),
          float(settings.get("scale_floor", DEFAULT_SCALE_FLOOR)))


def _stored_arrays(directory: Path) -> dict[tuple, Any]:
  """{path (digit components as ints): ArrayMetadata} of the params checkpoint."""
  params_dir = directory / PARAMS_DIR
  if not params_dir.is_dir():
    raise InputFileError(f"{params_dir}: params checkpoint not found")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.metadata(params_dir.absolute()).item_metadata.tree
  except (OSError, ValueError, KeyError) as e:
    raise InputFileError(f"{params_dir}: cannot read the params checkpoint: {e}") from e
  return {tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path): value
          for path, value in _flat_pure(tree).items()}


def _restore(directory: Path, target: dict) -> dict:
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(directory.absolute() / PARAMS_DIR, target)


def _check_kind(directory: Path, found: str, kind: str | Sequence[str] | None) -> None:
  """Raises `InputFileError` when the checkpoint's kind is not the one (or one of those) a command needs."""
  if kind is None:
    return
  wanted = (kind,) if isinstance(kind, str) else tuple(kind)
  if found not in wanted:
    raise InputFileError(f"{directory}: a {found!r} checkpoint; expected {' or '.join(map(repr, wanted))}")


def load(directory: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
         rules: LogicalRules | None = None, kind: str | Sequence[str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> nnx.Module:
  """Rebuilds the model saved in `directory` and restores its params straight into their target placement.

  Args:
    directory: a checkpoint written by `save`.
    mesh: None: every param on the default device. A mesh: params annotated with logical axis names
      (`nnx.with_partitioning(init, ('embed', 'mlp'))`) are sharded by `rules`, everything else replicated.
    rules: (logical name, mesh axis or tuple of axes or None) pairs, e.g. [('mlp', 'tensor')]; default none
      (replicate everything).
    kind: the model kind (or kinds) the caller needs; another kind is an `InputFileError` naming both.
    overrides: config fields to rebuild the model with, e.g. the compute settings {'dtype': 'bfloat16',
      'attention': 'cudnn'} (`parallel.compute.Compute.overrides`); fields its config does not have are skipped.

  Params keep the dtype they were saved in. Non-Param variables (RNG streams, ...) come from the model's
  constructor (seed 0), replicated over the mesh. Raises `InputFileError` for a missing / malformed
  checkpoint or params that do not fit the model its config builds (naming paths and shapes),
  `WonderlandError` for an unknown kind.
  """
  directory = Path(directory)
  if mesh is None and not jax.sharding.get_mesh().empty:  # inside `parallel.building_on(mesh, rules)`
    mesh = jax.sharding.get_mesh()
    rules = rules if rules is not None else spmd.get_logical_axis_rules()
  wanted = kind
  kind, config, _ = read_description(directory)
  _check_kind(directory, kind, wanted)
  config = {**config, **{key: value for key, value in (overrides or {}).items() if key in config}}
  build = model_builder(kind)
  try:
    abstract = abstract_model(build, config)
  except InputFileError:
    raise
  except WonderlandError as error:  # a config the model refuses (bad sizes, ...)
    raise InputFileError(f"{directory / MODEL_JSON}: {error}") from None
  graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
  leaves = dict(nnx.to_flat_state(abstract_params))
  stored = _stored_arrays(directory)
  check_fit({_dotted(p): leaf.get_value().shape for p, leaf in leaves.items()},
            {_dotted(p): value.shape for p, value in stored.items()},
            f"{directory / PARAMS_DIR}: the params do not fit the {kind!r} model built from {directory / MODEL_JSON}",
            error=InputFileError, missing="model param(s) missing from the checkpoint",
            unexpected="stored param(s) not in the model", mismatch="{key}: stored {found}, model {expected}")
  target = _unflatten({
    p: jax.ShapeDtypeStruct(tuple(stored[p].shape), stored[p].dtype,
                            sharding=param_sharding(p, leaf, tuple(stored[p].shape), mesh, rules))
    for p, leaf in leaves.items()})
  restored = _flat_pure(_restore(directory, target))
  params = nnx.from_flat_state([(p, leaf.replace(restored[p])) for p, leaf in leaves.items()])
  others = _other_state(build, config, abstract)
  if mesh is not None:
    others = jax.device_put(others, NamedSharding(mesh, PartitionSpec()))
  logger.info("loaded %s checkpoint %s (%d params)", kind, directory,
              sum(int(np.prod(v.shape)) for v in restored.values()))
  return nnx.merge(graphdef, params, others)


def load_params(directory: str | os.PathLike) -> tuple[str, dict, dict]:
  """(kind, config, params pure dict of arrays on the default device), without building the model; nnx.List
  indices are ints as in `nnx.State.to_pure_dict()`."""
  directory = Path(directory)
  kind, config, _ = read_description(directory)
  stored = _stored_arrays(directory)
  target = _unflatten({p: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=default_sharding())
                       for p, m in stored.items()})
  return kind, config, _restore(directory, target)
