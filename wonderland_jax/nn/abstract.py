"""Abstract model builds (shapes and dtypes, nothing allocated) that stay linear in the model's size.

    model = abstract_build(lambda: CogVideoXTransformer(config, rngs=nnx.Rngs(0)))   # ShapeDtypeStruct values
    with cheap_tracer_errors():
      state = jax.jit(build_other_variables)()                                       # any trace of a build

Why: with JAX 0.10, reading `.sharding` of a tracer raises an AttributeError whose message is built eagerly by
walking every equation traced so far (`DynamicJaxprTracer._origin_msg` -> `find_progenitors`). Flax's
`Variable.set_value` reads it (through `getattr(value, "sharding", None)`) each time an RNG stream advances, i.e.
once per initialised param, so tracing a model's constructor is quadratic in its number of params: the
CogVideoX-5B camera DiT with its VAE took 107 s to build abstractly on 2 CPU cores, 4.8 s with the walk off
(`benchmarks/abstract_build.py`). Inside these contexts the walk is skipped; the only loss is the "this value
came from ..." sentence in a concretisation error raised while tracing a constructor.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from flax import nnx
from jax._src.interpreters import partial_eval

T = TypeVar("T")

_LOCK = threading.Lock()
_DEPTH = 0
_ORIGINAL = getattr(partial_eval.DynamicJaxprTracer, "_origin_msg", None)


def _no_origin(self) -> str:
  del self
  return ""


@contextlib.contextmanager
def cheap_tracer_errors() -> Iterator[None]:
  """Tracer error messages without the trace walk (see the module docstring); re-entrant, restored on exit.
  A no-op where this JAX has no `DynamicJaxprTracer._origin_msg`."""
  global _DEPTH
  if _ORIGINAL is None:
    yield
    return
  with _LOCK:
    _DEPTH += 1
    partial_eval.DynamicJaxprTracer._origin_msg = _no_origin
  try:
    yield
  finally:
    with _LOCK:
      _DEPTH -= 1
      if _DEPTH == 0:
        partial_eval.DynamicJaxprTracer._origin_msg = _ORIGINAL


def abstract_build(build: Callable[[], T]) -> T:
  """`nnx.eval_shape(build)` with eager sharding off (params annotated with `nnx.with_partitioning` need no mesh)
  and without the quadratic tracer-message walk."""
  with nnx.use_eager_sharding(False), cheap_tracer_errors():
    return nnx.eval_shape(build)
