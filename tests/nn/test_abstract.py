"""Abstract builds: the same shapes, dtypes and partitioning metadata as `nnx.eval_shape`, and the tracer
message walk switched off only inside the context (restored after, also on error and when nested)."""

import jax
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig
from wonderland_jax.nn.abstract import abstract_build, cheap_tracer_errors


def test_abstract_build_equals_eval_shape():
  build = lambda: LaLRM(LaLRMConfig(hidden_size=32, pose_dim=16, num_layers=2, head_dim=16), rngs=nnx.Rngs(0))
  with nnx.use_eager_sharding(False):
    expected = nnx.state(nnx.eval_shape(build), nnx.Param)
  built = nnx.state(abstract_build(build), nnx.Param)
  assert jax.tree.structure(built) == jax.tree.structure(expected)
  for ours, theirs in zip(jax.tree.leaves(built), jax.tree.leaves(expected), strict=True):
    assert isinstance(ours, jax.ShapeDtypeStruct) and (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)
  names = lambda state: [v.get_metadata().get("out_sharding") for v in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))]
  assert names(built) == names(expected) and any(names(built))


def test_the_walk_is_off_only_inside_and_restored():
  original = partial_eval.DynamicJaxprTracer._origin_msg
  seen = {}

  def traced(x):
    seen["inside"] = x._origin_msg()
    return x

  with cheap_tracer_errors():
    with cheap_tracer_errors():  # nested: still off after the inner exit
      pass
    jax.jit(traced)(1.0)
    assert seen["inside"] == ""
  assert partial_eval.DynamicJaxprTracer._origin_msg is original
  with pytest.raises(RuntimeError), cheap_tracer_errors():
    raise RuntimeError("boom")
  assert partial_eval.DynamicJaxprTracer._origin_msg is original
  jax.jit(traced)(jax.numpy.ones(3))  # another shape: traced again
  assert "traced" in seen["inside"]  # the full message outside: "... while tracing the function traced ..."
