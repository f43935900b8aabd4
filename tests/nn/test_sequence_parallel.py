"""Ulysses and ring attention over the 'context' axis of 8 fake CPU devices equal plain attention, forward and
gradient, including lengths that do not divide over the axis (padding masked out) and cross-attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.attention import dot_product_attention
from wonderland_jax.nn.sequence_parallel import sequence_parallel_attention
from wonderland_jax.parallel.mesh import make_mesh


@pytest.mark.parametrize("method", ["ulysses", "ring"])
@pytest.mark.parametrize("mesh_spec,q_length,kv_length", [("context=4,data=2", 32, 32), ("context=4,tensor=2", 30, 30),
                                                          ("context=8", 21, 13)])
def test_equals_plain_attention(method, mesh_spec, q_length, kv_length):
  mesh = make_mesh(mesh_spec)
  rng = np.random.default_rng(0)
  heads = 8
  q = jnp.asarray(rng.normal(size=(2, q_length, heads, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, kv_length, heads, 16)), jnp.float32) for _ in range(2))
  weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  expected = dot_product_attention(q, k, v)
  expected_grads = jax.grad(lambda *x: jnp.sum(dot_product_attention(*x) * weights), argnums=(0, 1, 2))(q, k, v)
  with jax.set_mesh(mesh):
    # Inputs already split over the tokens where they divide (as the model's activations are), else replicated.
    size = dict(mesh.shape)["context"]
    place = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "context")
                                                      if x.shape[1] % size == 0 else PartitionSpec()))
    args = [place(x) for x in (q, k, v)]
    attend = jax.jit(lambda *x: sequence_parallel_attention(*x, method=method))
    out = attend(*args)
    grads = jax.jit(jax.grad(lambda *x: jnp.sum(sequence_parallel_attention(*x, method=method) * weights),
                             argnums=(0, 1, 2)))(*args)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_without_a_context_axis_it_is_plain_attention_and_errors_name_the_problem():
  q = jnp.ones((1, 8, 3, 4))
  np.testing.assert_array_equal(sequence_parallel_attention(q, q, q, method="ring"), dot_product_attention(q, q, q))
  with jax.set_mesh(make_mesh("context=8")):
    with pytest.raises(WonderlandError, match=r"heads per tensor shard \(3\) divisible by the context axis \(8\)"):
      jax.jit(lambda x: sequence_parallel_attention(x, x, x, method="ulysses"))(q)
  with pytest.raises(WonderlandError, match="unknown sequence-parallel attention 'zigzag'"):
    sequence_parallel_attention(q, q, q, method="zigzag")
