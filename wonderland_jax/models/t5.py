"""CogVideoX's text encoder: the T5 encoder (transformers `T5EncoderModel`, T5 v1.1 XXL) in Flax NNX.

    encoder = T5Encoder(T5Config.from_transformers(config_json), rngs=nnx.Rngs(0))   # or checkpoints.load(...)
    hidden = encoder(input_ids, attention_mask)       # (B, L) int32 [, (B, L)] -> (B, L, d_model) float32

    tokenizer = T5Tokenizer.from_folder("CogVideoX-5b-I2V/tokenizer")        # wonderland_jax.models.t5_tokenizer
    embeds = encode_prompt(tokenizer, encoder, ["a red fox in the snow"])     # (1, 226, 4096), as the pipeline

Attribute paths equal transformers' module paths (`encoder.block[3].layer[1].DenseReluDense.wi_0`), so the
converter (`wonderland_jax/convert/t5.py`) is a short table of leaf renames: Linear `.weight` (out, in) ->
`.kernel` (in, out), Embedding `.weight` -> `.embedding`, T5LayerNorm `.weight` -> `.scale`. The token embedding
lives at `shared` only (transformers' `encoder.embed_tokens` is the same tensor, tied).

The computation is transformers' with dropout off: pre-norm blocks (RMS norm without mean subtraction or bias,
computed in float32), attention without the 1/sqrt(d_kv) scaling, a relative position bias (bidirectional
buckets) computed by block 0's `relative_attention_bias` and shared by every block, the attention mask added
as float32's most negative value on padded keys, softmax in float32, and a gated-GELU (tanh approximation,
"gelu_new") or ReLU feed-forward. The residual stream, norms, softmax and the feed-forward output projection
`wo` (which transformers keeps in float32 too) run in float32; `T5Config.dtype` sets the compute dtype of the
other projections and the attention products.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.checkpoints import register_model
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.common import config_values
from wonderland_jax.nn.partitioning import axes, param_init_context

logger = logging.getLogger(__name__)

# transformers' ACT2FN names we support -> function.
ACTIVATIONS = {
  "relu": jax.nn.relu,
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation (NewGELUActivation)
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf (GELUActivation)
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The fields of transformers' `T5Config` that shape the encoder, plus our compute `dtype`.

  Defaults are transformers' (t5-small, ReLU); `COGVIDEOX_T5` below is CogVideoX's t5-v1_1-xxl encoder.
  `dense_act_fn` None means derived from `feed_forward_proj` as transformers does ("gated-gelu" -> "gelu_new",
  otherwise its last "-" part); a config.json's explicit `dense_act_fn` wins, also as in transformers.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  dense_act_fn: str | None = None
  dtype: str = "float32"  # compute dtype of q/k/v/o, wi and the attention products; see the module docstring

  @classmethod
  def from_transformers(cls, config: dict, **overrides) -> T5Config:
    """From a transformers config.json dict. Keys that do not shape the encoder (decoder settings, dropout,
    token ids, transformers' own `dtype` / `torch_dtype` of the stored weights, ...) are ignored; a decoder
    config (`is_decoder: true`) is refused. `overrides` set our fields (e.g. dtype="bfloat16")."""
    if config.get("is_decoder"):
      raise WonderlandError("T5 config: is_decoder is true; only the (bidirectional) encoder is supported")
    names = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
    values = {k: v for k, v in config.items() if k in names}
    values.update(overrides)
    return cls.from_dict(values)

  @classmethod
  def from_dict(cls, config: dict) -> T5Config:
    """From our own `to_dict()` (unknown keys are an error); validated."""
    result = cls(**config_values(cls, config, "T5"))
    result.validate()
    return result

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise WonderlandError(f"T5 config: feed_forward_proj {self.feed_forward_proj!r} is not 'gated-<act>' or "
                            "'<act>'")
    if self.activation not in ACTIVATIONS:
      raise WonderlandError(f"T5 config: activation {self.activation!r} (feed_forward_proj "
                            f"{self.feed_forward_proj!r}, dense_act_fn {self.dense_act_fn!r}) is not supported; "
                            f"use one of {', '.join(ACTIVATIONS)}")
    if self.dtype not in COMPUTE_DTYPES:
      raise WonderlandError(f"T5 config: dtype {self.dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise WonderlandError(f"T5 config: {name} must be a positive integer, got {getattr(self, name)!r}")
    if self.relative_attention_num_buckets < 4:
      raise WonderlandError("T5 config: relative_attention_num_buckets must be at least 4")

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.split("-")[0] == "gated"

  @property
  def activation(self) -> str:
    """The ACT2FN name transformers would use."""
    if self.dense_act_fn is not None:
      return self.dense_act_fn
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


# CogVideoX's text_encoder/config.json (google t5-v1_1-xxl), encoder part.
COGVIDEOX_T5 = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new")


# ------------------------------------------------------------------------------------- position buckets


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """transformers' `T5Attention._relative_position_bucket` on the host (positions are static).

  relative_position: int array (memory position - query position), any shape -> int32 buckets in
  [0, num_buckets), same shape. Bidirectional: half the buckets for keys after the query. Of each half, the
  first half are exact distances, the rest logarithmic up to `max_distance` (farther ones share the last).
  The logarithm is evaluated in float32 with the same operation order as PyTorch, then truncated, so the
  bucket edges (where the value is an exact integer up to rounding) fall where transformers puts them.
  """
  relative_position = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros(relative_position.shape, np.int64)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):  # log(0) for the small distances, discarded below
    ratio = distance.astype(np.float32) / np.float32(max_exact)
    scaled = (np.log(ratio) / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(is_small, distance, large)).astype(np.int32)


# --------------------------------------------------------------------------------------------- modules


def _linear(in_features: int, out_features: int, dtype, rngs: nnx.Rngs, names: tuple) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_metadata=axes(*names), rngs=rngs)


class T5LayerNorm(nnx.Module):
  """T5's RMS norm: x / sqrt(mean(x^2) + eps) * scale, no mean subtraction, no bias; float32. (..., D)."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    del rngs
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), **axes("embed"))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(variance + self.eps) * self.scale[...].astype(jnp.float32)


class T5Attention(nnx.Module):
  """Multi-head self-attention without score scaling; block 0 also owns the relative position bias table
  `relative_attention_bias` (num_buckets, num_heads)."""

  def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, rngs: nnx.Rngs):
    inner = config.num_heads * config.d_kv
    dtype = config.compute_dtype
    self.num_heads, self.d_kv = config.num_heads, config.d_kv
    self.num_buckets = config.relative_attention_num_buckets
    self.max_distance = config.relative_attention_max_distance
    self.q = _linear(config.d_model, inner, dtype, rngs, ("embed", "heads"))
    self.k = _linear(config.d_model, inner, dtype, rngs, ("embed", "heads"))
    self.v = _linear(config.d_model, inner, dtype, rngs, ("embed", "heads"))
    self.o = _linear(inner, config.d_model, dtype, rngs, ("heads", "embed"))
    self.relative_attention_bias = (nnx.Embed(
        self.num_buckets, config.num_heads, param_dtype=jnp.float32, embedding_metadata=axes(None, "heads"),
        rngs=rngs) if has_relative_attention_bias else None)

  def compute_bias(self, query_length: int, key_length: int) -> jax.Array:
    """The relative position bias (1, num_heads, query_length, key_length), float32."""
    if self.relative_attention_bias is None:
      raise WonderlandError("this attention layer has no relative_attention_bias (only block 0 has one)")
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = relative_position_bucket(relative, True, self.num_buckets, self.max_distance)
    values = jnp.take(self.relative_attention_bias.embedding[...], jnp.asarray(buckets), axis=0)  # (Q, K, H)
    return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)

  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    """x (B, L, d_model) normed hidden states; bias (B or 1, H, L, L) float32 position bias plus mask."""
    batch, length, _ = x.shape
    heads = lambda t: t.reshape(batch, length, self.num_heads, self.d_kv)
    query, key, value = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(scores + bias, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)
    return self.o(out.reshape(batch, length, self.num_heads * self.d_kv))


class T5LayerSelfAttention(nnx.Module):
  def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, rngs: nnx.Rngs):
    self.SelfAttention = T5Attention(config, has_relative_attention_bias, rngs=rngs)
    self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, rngs=rngs)
    self.dtype = config.compute_dtype

  def __call__(self, hidden: jax.Array, bias: jax.Array) -> jax.Array:
    normed = self.layer_norm(hidden).astype(self.dtype)
    return hidden + self.SelfAttention(normed, bias).astype(jnp.float32)


class T5DenseGatedActDense(nnx.Module):
  """act(x @ wi_0) * (x @ wi_1) @ wo."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.wi_0 = _linear(config.d_model, config.d_ff, config.compute_dtype, rngs, ("embed", "mlp"))
    self.wi_1 = _linear(config.d_model, config.d_ff, config.compute_dtype, rngs, ("embed", "mlp"))
    self.wo = _linear(config.d_ff, config.d_model, jnp.float32, rngs, ("mlp", "embed"))
    self.act = ACTIVATIONS[config.activation]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5DenseActDense(nnx.Module):
  """act(x @ wi) @ wo."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.wi = _linear(config.d_model, config.d_ff, config.compute_dtype, rngs, ("embed", "mlp"))
    self.wo = _linear(config.d_ff, config.d_model, jnp.float32, rngs, ("mlp", "embed"))
    self.act = ACTIVATIONS[config.activation]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(self.act(self.wi(x)))


class T5LayerFF(nnx.Module):
  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.DenseReluDense = (T5DenseGatedActDense(config, rngs=rngs) if config.is_gated
                           else T5DenseActDense(config, rngs=rngs))
    self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, rngs=rngs)
    self.dtype = config.compute_dtype

  def __call__(self, hidden: jax.Array) -> jax.Array:
    return hidden + self.DenseReluDense(self.layer_norm(hidden).astype(self.dtype)).astype(jnp.float32)


class T5Block(nnx.Module):
  """layer[0]: self-attention, layer[1]: feed-forward, each pre-normed with a residual connection."""

  def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, rngs: nnx.Rngs):
    self.layer = nnx.List([T5LayerSelfAttention(config, has_relative_attention_bias, rngs=rngs),
                           T5LayerFF(config, rngs=rngs)])

  def __call__(self, hidden: jax.Array, bias: jax.Array) -> jax.Array:
    return self.layer[1](self.layer[0](hidden, bias))


class T5Stack(nnx.Module):
  """transformers' encoder `T5Stack` minus its tied `embed_tokens` (see `T5Encoder.shared`)."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.block = nnx.List([T5Block(config, i == 0, rngs=rngs) for i in range(config.num_layers)])
    self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, rngs=rngs)

  def __call__(self, hidden: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """hidden (B, L, d_model) float32 embeddings; attention_mask (B, L), nonzero = attend -> (B, L, d_model)."""
    length = hidden.shape[1]
    bias = self.block[0].layer[0].SelfAttention.compute_bias(length, length)  # (1, H, L, L)
    if attention_mask is not None:
      keep = jnp.asarray(attention_mask) != 0
      bias = bias + jnp.where(keep[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
    for block in self.block:
      hidden = block(hidden, bias)
    return self.final_layer_norm(hidden)


class T5Encoder(nnx.Module):
  """transformers' `T5EncoderModel`; see the module docstring. Params: `shared.embedding` (vocab, d_model),
  `encoder.block[i].layer[0].SelfAttention.{q,k,v,o}.kernel`, `...layer[1].DenseReluDense.{wi_0,wi_1,wo}` or
  `{wi,wo}`, `...layer[j].layer_norm.scale`, `encoder.block[0].layer[0].SelfAttention.relative_attention_bias
  .embedding`, `encoder.final_layer_norm.scale`."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.config = config
    with param_init_context():
      self.shared = nnx.Embed(config.vocab_size, config.d_model, param_dtype=jnp.float32,
                              embedding_metadata=axes("vocab", "embed"), rngs=rngs)
      self.encoder = T5Stack(config, rngs=rngs)

  def __call__(self, input_ids: Any, attention_mask: Any | None = None) -> jax.Array:
    """input_ids (B, L) int; attention_mask (B, L) 1 = token, 0 = padding, or None (attend everywhere, as the
    CogVideoX pipeline calls it) -> last hidden state (B, L, d_model) float32.

    Ids given as numpy / lists are checked against `vocab_size` (`WonderlandError`); under jit they cannot
    be, and an out-of-range id yields NaN rows."""
    if isinstance(input_ids, (np.ndarray, list, tuple)):
      ids = np.asarray(input_ids)
      if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
        raise WonderlandError(f"T5 encoder: token ids must lie in [0, {self.config.vocab_size}), got "
                              f"[{ids.min()}, {ids.max()}]")
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise WonderlandError(f"T5 encoder: input_ids must be (batch, length), got shape {input_ids.shape}")
    if attention_mask is not None and tuple(np.shape(attention_mask)) != tuple(input_ids.shape):
      raise WonderlandError(f"T5 encoder: attention_mask shape {tuple(np.shape(attention_mask))} differs from "
                            f"input_ids shape {tuple(input_ids.shape)}")
    hidden = jnp.take(self.shared.embedding[...], input_ids.astype(jnp.int32), axis=0).astype(jnp.float32)
    return self.encoder(hidden, attention_mask)


@nnx.jit
def _encode_ids(text_encoder: T5Encoder, input_ids: jax.Array) -> jax.Array:
  return text_encoder(input_ids)


def encode_prompt(tokenizer, text_encoder: T5Encoder, prompts: str | Sequence[str], max_length: int = 226, *,
                  num_videos_per_prompt: int = 1, dtype: Any = None) -> jax.Array:
  """diffusers' CogVideoX `_get_t5_prompt_embeds`: prompts -> (B * num_videos_per_prompt, max_length, d_model).

  Tokenizes with `tokenizer` (a `wonderland_jax.models.t5_tokenizer.T5Tokenizer`: EOS appended, truncated
  to `max_length`, right-padded with the pad id) and runs `text_encoder` on the ids WITHOUT the attention
  mask, exactly as the pipeline does (padding tokens are attended to and get embeddings of their own). Each
  prompt's embeddings are repeated `num_videos_per_prompt` times consecutively. `dtype`: output dtype
  (default float32; the pipeline casts to the text encoder's dtype).
  """
  if num_videos_per_prompt < 1:
    raise WonderlandError(f"num_videos_per_prompt must be at least 1, got {num_videos_per_prompt}")
  if len(tokenizer) > text_encoder.config.vocab_size:
    raise WonderlandError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder's vocab_size is "
                          f"{text_encoder.config.vocab_size}; they do not belong together")
  input_ids, _ = tokenizer(prompts, max_length=max_length)
  embeds = _encode_ids(text_encoder, jnp.asarray(input_ids))
  if num_videos_per_prompt > 1:
    embeds = jnp.repeat(embeds, num_videos_per_prompt, axis=0)
  return embeds if dtype is None else embeds.astype(dtype)


def build(config: dict, rngs: nnx.Rngs) -> T5Encoder:
  """Factory for the checkpoint registry: a JSON config dict (our `T5Config.to_dict()`) -> model."""
  return T5Encoder(T5Config.from_dict(config), rngs=rngs)


register_model("t5_encoder", build)
