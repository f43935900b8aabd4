"""Key table: diffusers `CogVideoXTransformer3DModel` (the `transformer/` folder) -> `CogVideoXTransformer`.

CogVideoX 1.0 layouts (2B, 5B, 5B-I2V); the first matching rule wins.
"""

from __future__ import annotations

from wonderland_jax.convert.rules import Rule
from wonderland_jax.models.dit import DiTConfig

_LAYER_NORMS = r"(.*\.norm|norm_final|.*\.norm_[qk])"

RULES = [
    Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", "conv2d"),
    Rule(r"patch_embed\.pos_embedding", "patch_embed.pos_embedding"),
    Rule(_LAYER_NORMS + r"\.weight", r"\1.scale"),
    Rule(_LAYER_NORMS + r"\.bias", r"\1.bias"),
    Rule(r"(.*)\.weight", r"\1.kernel", "linear"),
    Rule(r"(.*)\.bias", r"\1.bias"),
]


def config_from_source(config: dict) -> dict:
  """diffusers config.json -> our JSON config (validated)."""
  dit_config = DiTConfig.from_diffusers(config)
  if dit_config.patch_size_t is not None:
    raise ValueError("CogVideoX 1.5 checkpoints (patch_size_t) are not supported by this converter yet")
  return dit_config.to_dict()
