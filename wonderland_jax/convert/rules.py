"""Rule tables mapping PyTorch (diffusers) tensor names onto the nnx.Param paths of our models.

    RULES = [
      Rule(r"(.*conv.*)\\.weight", r"\\1.kernel", "conv3d"),   # encoder.down_blocks.0.conv.weight
      Rule(r"(.*norm\\d*)\\.weight", r"\\1.scale"),             #   -> ('encoder', 'down_blocks', 0, 'conv', 'kernel')
      Rule(r"(.*)\\.bias", r"\\1.bias"),
    ]
    abstract = nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0)))
    state, report = convert_state(open_source(folder), RULES, abstract)
    graphdef, _ = nnx.split(abstract)
    model = nnx.merge(graphdef, state)          # a model holding only nnx.Params (else see checkpoints.instantiate)

Each source key is matched against the rules in order; the first whose `pattern` matches the whole key wins.
Its `target` (an `re` replacement template, e.g. r"\\1.kernel") gives the dotted target path; components
made only of digits become integers, the indices of `nnx.List`s. A rule with `target=None` drops the keys it
matches on purpose (they are listed in the report). The `layout` turns the PyTorch layout into ours:

  identity   any shape, unchanged (biases, norm scales, embeddings, ...)
  linear     (out, in) -> (in, out)                      nnx.Linear kernel
  conv1d     (O, I, W) -> (W, I, O)                      nnx.Conv kernels: spatial dims first, then in, out
  conv2d     (O, I, H, W) -> (H, W, I, O)
  conv3d     (O, I, T, H, W) -> (T, H, W, I, O)

Before any tensor is read, `convert_state` checks the whole mapping from the headers alone: every source key
matched by a rule, every target an nnx.Param of the model, every param filled exactly once, every shape (after
the layout) equal to the model's. All problems are raised together in one `ConversionError`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.convert.safetensors_io import TensorSource
from wonderland_jax.errors import WonderlandError
from wonderland_jax.progress import progress

# layout -> (rank it applies to or None for any, axis permutation applied with np.transpose)
LAYOUTS: dict[str, tuple[int | None, tuple[int, ...] | None]] = {
  "identity": (None, None),
  "linear": (2, (1, 0)),
  "conv1d": (3, (2, 1, 0)),
  "conv2d": (4, (2, 3, 1, 0)),
  "conv3d": (5, (2, 3, 4, 1, 0)),
}
MAX_LISTED = 20

ParamPath = tuple[str | int, ...]


class ConversionError(WonderlandError):
  """The weights do not fit the model. The message lists every offender by category; the same lists are kept
  as attributes: `unmatched` (source keys), `not_in_model` ((key, target path)), `unfilled` (param paths),
  `filled_twice` ((path, keys)), `mismatches` ((key, path, source shape, shape after layout or None, expected))."""

  def __init__(self, message: str, *, unmatched=(), not_in_model=(), unfilled=(), filled_twice=(), mismatches=()):
    super().__init__(message)
    self.unmatched = list(unmatched)
    self.not_in_model = list(not_in_model)
    self.unfilled = list(unfilled)
    self.filled_twice = list(filled_twice)
    self.mismatches = list(mismatches)


def layout_shape(layout: str, shape: Sequence[int]) -> tuple[int, ...] | None:
  """The shape `layout` turns a tensor of `shape` into; None if the layout does not apply to that rank."""
  rank, axes = LAYOUTS[layout]
  if rank is not None and len(shape) != rank:
    return None
  return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def apply_layout(layout: str, array: np.ndarray) -> np.ndarray:
  """Transposes a PyTorch-layout array into our layout (see the module docstring); ValueError on a bad rank."""
  rank, axes = LAYOUTS[layout]
  if rank is not None and array.ndim != rank:
    raise ValueError(f"layout {layout!r} needs a {rank}-d array, got shape {array.shape}")
  return array if axes is None else np.ascontiguousarray(np.transpose(array, axes))


def parse_path(dotted: str) -> ParamPath:
  """'encoder.down_blocks.0.conv.kernel' -> ('encoder', 'down_blocks', 0, 'conv', 'kernel')."""
  parts = dotted.split(".")
  if not all(parts):
    raise ValueError(f"bad target path {dotted!r}: empty component")
  return tuple(int(p) if p.isdigit() else p for p in parts)


def format_path(path: ParamPath) -> str:
  return ".".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Rule:
  """Maps source keys that fully match `pattern` to the param path `re.Match.expand(target)`; see the module
  docstring. `target=None` drops the matched keys on purpose."""

  pattern: str
  target: str | None
  layout: str = "identity"

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"Rule({self.pattern!r}): unknown layout {self.layout!r}; use one of {sorted(LAYOUTS)}")
    object.__setattr__(self, "_regex", re.compile(self.pattern))

  def match(self, key: str) -> re.Match | None:
    return self._regex.fullmatch(key)

  def target_path(self, match: re.Match) -> ParamPath:
    """The target path for a match of this rule."""
    try:
      return parse_path(match.expand(self.target))
    except (re.error, IndexError, ValueError) as e:
      raise ValueError(f"{self}: cannot build the target for {match.string!r}: {e}") from e


def match_rule(rules: Sequence[Rule], key: str) -> tuple[Rule, re.Match] | None:
  """The first rule matching `key` and its match, or None."""
  for rule in rules:
    match = rule.match(key)
    if match is not None:
      return rule, match
  return None


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What `convert_state` did.

  num_params: total number of scalars converted; num_tensors: tensors converted; source_dtypes: safetensors
  dtype names seen ('BF16', 'F32', ...); dtype: the dtype of the converted params; max_rounding_error:
  max |converted - source| with the converted value cast back to the source dtype (0.0 for exact upcasts; it
  measures the loss when `dtype` is less precise than the source); elapsed_s: wall time; ignored: source keys
  dropped by `target=None` rules.
  """

  source: str
  num_params: int
  num_tensors: int
  source_dtypes: tuple[str, ...]
  dtype: str
  max_rounding_error: float
  elapsed_s: float
  ignored: tuple[str, ...] = ()

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _listing(title: str, lines: Sequence[str]) -> str:
  shown = [f"    {line}" for line in lines[:MAX_LISTED]]
  if len(lines) > MAX_LISTED:
    shown.append(f"    ... and {len(lines) - MAX_LISTED} more")
  return f"  {len(lines)} {title}:\n" + "\n".join(shown)


def _max_rounding_error(converted: np.ndarray, source: np.ndarray) -> float:
  """max |converted cast back to the source dtype - source|; equal values (infinities, NaN vs NaN) count 0."""
  back = converted.astype(source.dtype).astype(np.float64)
  source = source.astype(np.float64)
  same = (back == source) | (np.isnan(back) & np.isnan(source))
  return float(np.max(np.where(same, 0.0, np.abs(back - source)), initial=0.0))


def _param_leaves(model: nnx.Module) -> dict[ParamPath, nnx.Variable]:
  return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def convert_state(source: TensorSource, rules: Sequence[Rule], abstract_model: nnx.Module, *,
                  dtype: Any = jnp.float32, progress_desc: str | None = None) -> tuple[nnx.State, ConversionReport]:
  """Converts the tensors of `source` into the nnx.Param state of `abstract_model` following `rules`.

  Args:
    source: the weights (see `open_source`).
    rules: the rule table; the first rule whose pattern fully matches a key is used for it.
    abstract_model: the target model, usually `nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0)))`;
      only its nnx.Param paths and shapes are used.
    dtype: dtype of the converted params (e.g. jnp.float32, jnp.bfloat16 or their names).
    progress_desc: label of the progress bar (default: the source folder's name).

  Returns the nnx.Param state (jax arrays on the default device, with the model's param metadata), which
  `nnx.merge(graphdef, state)` accepts for a graphdef from `nnx.split(abstract_model)` when the model has no
  other variables, and a `ConversionReport`. Raises one `ConversionError` listing every unmatched source key,
  target outside the model, unfilled or twice-filled param and shape mismatch; nothing is read before the
  whole mapping checked out.
  """
  start = time.monotonic()
  dtype = jnp.dtype(dtype)
  leaves = _param_leaves(abstract_model)
  plan: list[tuple[str, ParamPath, str]] = []
  unmatched, not_in_model, mismatches, ignored = [], [], [], []
  sources_of: dict[ParamPath, list[str]] = {}
  for key in source.keys():
    found = match_rule(rules, key)
    if found is None:
      unmatched.append(key)
      continue
    rule, match = found
    if rule.target is None:
      ignored.append(key)
      continue
    path = rule.target_path(match)
    if path not in leaves:
      not_in_model.append((key, path))
      continue
    sources_of.setdefault(path, []).append(key)
    expected = tuple(leaves[path].get_value().shape)
    got = layout_shape(rule.layout, source.shape(key))
    if got != expected:
      mismatches.append((key, path, source.shape(key), rule.layout, got, expected))
    plan.append((key, path, rule.layout))
  unfilled = [path for path in leaves if path not in sources_of]
  filled_twice = [(path, keys) for path, keys in sources_of.items() if len(keys) > 1]
  if unmatched or not_in_model or unfilled or filled_twice or mismatches:
    sections = []
    if unmatched:
      sections.append(_listing("source key(s) matched by no rule", unmatched))
    if not_in_model:
      sections.append(_listing("target(s) not an nnx.Param of the model",
                               [f"{format_path(p)} (from {k})" for k, p in not_in_model]))
    if unfilled:
      sections.append(_listing("model param(s) not filled",
                               [f"{format_path(p)} {tuple(leaves[p].get_value().shape)}" for p in unfilled]))
    if filled_twice:
      sections.append(_listing("model param(s) filled more than once",
                               [f"{format_path(p)} from {', '.join(keys)}" for p, keys in filled_twice]))
    if mismatches:
      sections.append(_listing("shape mismatch(es)", [
        f"{k} -> {format_path(p)}: source {s}, "
        + (f"after {layout} {g}" if g is not None else f"wrong rank for layout {layout}")
        + f", expected {e}" for k, p, s, layout, g, e in mismatches]))
    problems = len(unmatched) + len(not_in_model) + len(unfilled) + len(filled_twice) + len(mismatches)
    raise ConversionError(
      f"{source.path}: the weights do not fit the model ({len(source)} source tensors, {len(leaves)} model "
      f"params, {len(rules)} rules; {problems} problem(s)):\n" + "\n".join(sections),
      unmatched=unmatched, not_in_model=not_in_model, unfilled=unfilled, filled_twice=filled_twice,
      mismatches=[(k, p, s, g, e) for k, p, s, _, g, e in mismatches])

  values: dict[ParamPath, jax.Array] = {}
  max_error, num_params, source_dtypes = 0.0, 0, set()
  for key, path, layout in progress(plan, desc=progress_desc or f"converting {source.path.name}"):
    raw = source.read_raw(key)
    source_dtypes.add(source.dtype(key))
    oriented = apply_layout(layout, raw)
    converted = oriented.astype(dtype)
    if converted.dtype != oriented.dtype:
      max_error = max(max_error, _max_rounding_error(converted, oriented))
    values[path] = jax.device_put(converted)
    num_params += converted.size
  state = nnx.from_flat_state([(path, leaf.replace(values[path])) for path, leaf in leaves.items()])
  report = ConversionReport(source=str(source.path), num_params=int(num_params), num_tensors=len(plan),
                            source_dtypes=tuple(sorted(source_dtypes)), dtype=dtype.name,
                            max_rounding_error=max_error, elapsed_s=time.monotonic() - start,
                            ignored=tuple(ignored))
  return state, report
