"""The attention implementations against a direct softmax(q k^T) v: splash runs in Pallas' interpreter on CPU
(the kernel TPUs run), with sequences that need padding to whole blocks, in the forward and the gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.attention import chunked_attention, dot_product_attention, splash_attention


def _direct(q, k, v, scale):
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k, precision="highest") * scale
  return jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(scores, -1), v, precision="highest")


@pytest.mark.parametrize("q_length,kv_length,scale", [(200, 200, None), (130, 90, 0.3)])
def test_splash_equals_direct_attention(q_length, kv_length, scale):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, q_length, 2, 64)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, kv_length, 2, 64)), jnp.float32) for _ in range(2))
  used_scale = 64 ** -0.5 if scale is None else scale
  expected = _direct(q, k, v, used_scale)
  out = splash_attention(q, k, v, scale=scale, interpret=True)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, atol=2e-5)
  np.testing.assert_allclose(dot_product_attention(q, k, v, scale=scale), expected, atol=2e-5)
  weights = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
  grads = jax.grad(lambda *x: jnp.sum(splash_attention(*x, scale=scale, interpret=True) * weights),
                   argnums=(0, 1, 2))(q, k, v)
  expected_grads = jax.grad(lambda *x: jnp.sum(_direct(*x, used_scale) * weights), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()))


def test_accelerator_implementations_refuse_other_backends():
  q = jnp.ones((1, 4, 1, 8))
  if jax.default_backend() != "tpu":
    with pytest.raises(WonderlandError, match="'splash' needs a TPU"):
      dot_product_attention(q, q, q, implementation="splash")
  if jax.default_backend() != "gpu":
    with pytest.raises(WonderlandError, match="'cudnn' needs an NVIDIA GPU"):
      dot_product_attention(q, q, q, implementation="cudnn")
  with pytest.raises(WonderlandError, match="unknown attention implementation 'magic'"):
    dot_product_attention(q, q, q, implementation="magic")


@pytest.mark.parametrize("length,chunk", [(50, 16), (32, 32), (7, 1024)])
def test_chunked_equals_direct_attention_and_keeps_no_full_score_matrix(length, chunk):
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 9, 3, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32) for _ in range(2))
  weights = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  attend = lambda *x: chunked_attention(*x, chunk=chunk)
  np.testing.assert_allclose(attend(q, k, v), _direct(q, k, v, 8 ** -0.5), atol=2e-5)
  np.testing.assert_allclose(dot_product_attention(q, k, v, implementation="chunked"), _direct(q, k, v, 8 ** -0.5),
                             atol=2e-5)
  grads = jax.grad(lambda *x: jnp.sum(attend(*x) * weights), argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(lambda *x: jnp.sum(_direct(*x, 8 ** -0.5) * weights), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()))
  if length > chunk:  # no intermediate of the full (9, length) score shape, forward or backward
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *x: jnp.sum(attend(*x) * weights)))(q, k, v))
    assert f"3,9,{length}]" not in jaxpr.replace(" ", "") and f"3,9,{chunk}]" in jaxpr.replace(" ", "")
