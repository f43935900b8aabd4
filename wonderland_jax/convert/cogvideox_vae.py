"""Key table: diffusers `AutoencoderKLCogVideoX` (the `vae/` folder of CogVideoX pipelines) -> `CogVideoXVAE`.

Module paths are equal; only the leaf names and layouts change. The first matching rule wins.
"""

from __future__ import annotations

from wonderland_jax.convert import Converter
from wonderland_jax.convert.rules import Rule
from wonderland_jax.models.vae import VAEConfig, build

RULES = [
    # Per-frame 2D convolutions of the down/up-samplers: (O, I, H, W) -> (H, W, I, O).
    Rule(r"(.*\.(?:up|down)samplers\.\d+\.conv)\.weight", r"\1.kernel", "conv2d"),
    # Plain 1x1x1 convolutions (diffusers' CogVideoXSafeConv3d) sit one level deeper in our tree.
    Rule(r"(.*conv_shortcut|(?:post_)?quant_conv)\.weight", r"\1.conv.kernel", "conv3d"),
    Rule(r"(.*conv_shortcut|(?:post_)?quant_conv)\.bias", r"\1.conv.bias"),
    # GroupNorms (ours wrap nnx.GroupNorm as `.norm`): the spatial norms' `norm_layer`, the resnets' norm1/2
    # in the encoder and the encoder's norm_out.
    Rule(r"(.*(?:norm_layer|norm1|norm2|norm_out))\.weight", r"\1.norm.scale"),
    Rule(r"(.*(?:norm_layer|norm1|norm2|norm_out))\.bias", r"\1.norm.bias"),
    # Causal 3D convolutions: (O, I, T, H, W) -> (T, H, W, I, O).
    Rule(r"(.*\.conv)\.weight", r"\1.kernel", "conv3d"),
    Rule(r"(.*\.conv)\.bias", r"\1.bias"),
]


def config_from_source(config: dict) -> dict:
  """diffusers config.json -> our JSON config (validated)."""
  return VAEConfig.from_diffusers(config).to_dict()


CONVERTER = Converter(name="vae", kind="cogvideox_vae", subfolder="vae", config_from_source=config_from_source,
                      rules=RULES, build=build)
