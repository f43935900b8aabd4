"""Tiny CogVideoX transformer configs (one per published variant), the rotary embedding diffusers' pipelines
pass, and random values for a camera branch."""

import jax
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid
from flax import nnx

from wonderland_jax.models.camera_dit import BRANCH

BASE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=12,
            text_embed_dim=20, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, max_text_seq_length=7)


CONFIGS = {
    "5b_i2v_like": dict(BASE, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "2b_like": dict(BASE, use_rotary_positional_embeddings=False),
    "5b_like": dict(BASE, use_rotary_positional_embeddings=True, attention_bias=False),
    # CogVideoX 1.5: (2, 2, 2) patches embedded by a linear (with a bias although patch_bias is False, as in
    # diffusers), 'slice' rotary grids, no positional embedding; the I2V model adds the ofs embedding.
    "1.5_t2v_like": dict(BASE, in_channels=4, patch_size_t=2, patch_bias=False,
                         use_rotary_positional_embeddings=True),
    "1.5_i2v_like": dict(BASE, patch_size_t=2, patch_bias=False, ofs_embed_dim=12,
                         use_rotary_positional_embeddings=True),
}


def pipeline_rotary(config, frames, height, width):
  """What diffusers' CogVideoX pipelines pass as image_rotary_emb (latent sizes in, patch size 2): 'linspace'
  grids over the crop region for 1.0, 'slice' grids of the sample size for 1.5 (patch_size_t)."""
  if not config.get("use_rotary_positional_embeddings"):
    return None
  grid_height, grid_width = height // 2, width // 2
  base_height, base_width = config["sample_height"] // 2, config["sample_width"] // 2
  p_t = config.get("patch_size_t")
  if p_t is not None:
    return get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], crops_coords=None,
                                   grid_size=(grid_height, grid_width), temporal_size=(frames + p_t - 1) // p_t,
                                   grid_type="slice", max_size=(base_height, base_width))
  crops = get_resize_crop_region_for_grid((grid_height, grid_width), base_width, base_height)
  return get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], crops_coords=crops,
                                 grid_size=(grid_height, grid_width), temporal_size=frames)


def perturb(model, seed=1, scale=0.05):
  """Random values for every branch param (the zero inits make the branches invisible otherwise)."""
  state = nnx.state(model, BRANCH)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [
      leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]))
