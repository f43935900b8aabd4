"""Key tables: diffusers `CogVideoXTransformer3DModel` (the `transformer/` folder) -> `CogVideoXTransformer`.

CogVideoX 1.0 (2B, 5B, 5B-I2V) and 1.5 (5B, 5B-I2V) layouts; the first matching rule wins. The two versions
differ in the patch embedding: 1.0 embeds each frame with an `nn.Conv2d` (`patch_embed.proj.weight` (O, I, p, p),
bias only with `patch_bias`), 1.5 embeds (p_t, p, p) patches with an `nn.Linear` (`patch_embed.proj.weight`
(O, I * p_t * p * p), always with a bias, whatever `patch_bias` says). The 1.5 I2V model's `ofs_embedding.linear_1/2`
are ordinary linears. The keys are the same in both versions, so the table follows the config: `rules_for`.
"""

from __future__ import annotations

from wonderland_jax.convert import Converter
from wonderland_jax.convert.rules import Rule
from wonderland_jax.models.dit import DiTConfig, build

_LAYER_NORMS = r"(.*\.norm|norm_final|.*\.norm_[qk])"
_COMMON = [
    Rule(r"patch_embed\.pos_embedding", "patch_embed.pos_embedding"),
    Rule(_LAYER_NORMS + r"\.weight", r"\1.scale"),
    Rule(_LAYER_NORMS + r"\.bias", r"\1.bias"),
    Rule(r"(.*)\.weight", r"\1.kernel", "linear"),  # ofs_embedding.linear_1/2, time_embedding, attn, ff, ...
    Rule(r"(.*)\.bias", r"\1.bias"),
]

RULES_1_0 = [Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", "conv2d"), *_COMMON]
RULES_1_5 = [Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", "linear"), *_COMMON]


def rules_for(config: dict) -> list[Rule]:
  """The rule table for a transformer config (ours or diffusers'): 1.5 when it sets `patch_size_t`."""
  return RULES_1_5 if config.get("patch_size_t") is not None else RULES_1_0


def config_from_source(config: dict) -> dict:
  """diffusers config.json -> our JSON config (validated)."""
  return DiTConfig.from_diffusers(config).to_dict()


CONVERTER = Converter(name="transformer", kind="cogvideox_transformer", subfolder="transformer",
                      config_from_source=config_from_source, rules=rules_for, build=build)
