"""Key table: transformers `T5EncoderModel` (the `text_encoder/` folder of CogVideoX pipelines) -> `T5Encoder`.

Module paths are equal; only the leaf names and layouts change. transformers' `encoder.embed_tokens.weight` is
tied to `shared.weight` (recent transformers versions save `shared.weight` only; older checkpoints hold both,
equal): ours has the embedding once, at `shared`, and the duplicate is dropped. The first matching rule wins.
"""

from __future__ import annotations

from wonderland_jax.convert import Converter
from wonderland_jax.convert.rules import Rule
from wonderland_jax.models.t5 import T5Config, build

RULES = [
    Rule(r"shared\.weight", "shared.embedding"),
    Rule(r"encoder\.embed_tokens\.weight", None),  # tied to shared.weight
    # Block 0's relative position bias table (num_buckets, num_heads): an nnx.Embed.
    Rule(r"(encoder\.block\.\d+\.layer\.0\.SelfAttention\.relative_attention_bias)\.weight", r"\1.embedding"),
    # T5LayerNorm weights (pre-attention, pre-feed-forward and final norms).
    Rule(r"(encoder\.(?:block\.\d+\.layer\.\d+\.layer_norm|final_layer_norm))\.weight", r"\1.scale"),
    # Bias-free Linears: (out, in) -> (in, out).
    Rule(r"(encoder\.block\.\d+\.layer\.0\.SelfAttention\.[qkvo])\.weight", r"\1.kernel", "linear"),
    Rule(r"(encoder\.block\.\d+\.layer\.1\.DenseReluDense\.(?:wi_0|wi_1|wi|wo))\.weight", r"\1.kernel", "linear"),
]


def config_from_source(config: dict) -> dict:
  """transformers config.json -> our JSON config (validated)."""
  return T5Config.from_transformers(config).to_dict()


CONVERTER = Converter(name="text_encoder", kind="t5_encoder", subfolder="text_encoder",
                      config_from_source=config_from_source, rules=RULES, build=build)
