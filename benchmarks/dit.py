"""CogVideoX transformer benchmark: our Flax port (jit) vs diffusers (PyTorch), side by side in one run.

    python benchmarks/dit.py                    # mid-size config on CPU
    python benchmarks/dit.py --full-5b-i2v --frames 13 --height 60 --width 90 --dtype bfloat16 --batch 2  # GPU

Prints one Markdown table: forward milliseconds (median of --repeats after a warm-up) for both, and the
FLOPs per forward from XLA's cost analysis of our compiled program (with the achieved FLOP/s). Random weights.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig

MID_SIZE = dict(num_attention_heads=8, attention_head_dim=64, in_channels=32, out_channels=16, time_embed_dim=256,
                text_embed_dim=256, num_layers=4, sample_width=32, sample_height=32, sample_frames=13,
                max_text_seq_length=32, use_rotary_positional_embeddings=True)
FULL_5B_I2V = dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16,
                   time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60,
                   sample_frames=49, max_text_seq_length=226, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True)


def _time_ms(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, default=4, help="latent frames")
  parser.add_argument("--height", type=int, default=32, help="latent height")
  parser.add_argument("--width", type=int, default=32, help="latent width")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--full-5b-i2v", action="store_true")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--attention", default="xla", choices=("xla", "cudnn"))
  parser.add_argument("--skip-diffusers", action="store_true")
  args = parser.parse_args()

  source = FULL_5B_I2V if args.full_5b_i2v else MID_SIZE
  config = DiTConfig.from_diffusers(source, dtype=args.dtype, attention=args.attention)
  model = CogVideoXTransformer(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x, c, t: nnx.merge(graphdef, state)(x, c, t))
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(args.batch, args.frames, args.height, args.width, config.in_channels)).astype(np.float32)
  text = rng.normal(size=(args.batch, config.max_text_seq_length, config.text_embed_dim)).astype(np.float32)
  timestep = np.full((args.batch,), 500)
  inputs = (jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timestep))
  ours_ms = _time_ms(lambda: jax.block_until_ready(forward(state, *inputs)), args.repeats)
  cost = forward.lower(state, *inputs).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))

  ref_ms = None
  if not args.skip_diffusers:
    import torch  # noqa: PLC0415 (the reference is optional: --skip_diffusers)
    from diffusers import CogVideoXTransformer3DModel  # noqa: PLC0415 (the reference is optional: --skip_diffusers)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: PLC0415 (the reference is optional: --skip_diffusers)
    from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid  # noqa: PLC0415 (the reference is optional: --skip_diffusers)

    torch.set_grad_enabled(False)
    reference = CogVideoXTransformer3DModel(**source).eval()
    grid_h, grid_w = args.height // 2, args.width // 2
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), source["sample_width"] // 2, source["sample_height"] // 2)
    rotary = get_3d_rotary_pos_embed(embed_dim=source["attention_head_dim"], crops_coords=crops,
                                     grid_size=(grid_h, grid_w), temporal_size=args.frames)
    x = torch.from_numpy(np.moveaxis(latents, -1, 2).copy())
    ref_ms = _time_ms(lambda: reference(x, torch.from_numpy(text), torch.from_numpy(timestep),
                                        image_rotary_emb=rotary), args.repeats)

  device = jax.devices()[0]
  tokens = args.frames * args.height * args.width // 4 + config.max_text_seq_length
  print(f"device: {device.platform} ({device.device_kind}); host {platform.machine()}; jax {jax.__version__}; "
        f"{'5B-I2V' if args.full_5b_i2v else 'mid-size'} transformer ({config.num_layers} layers, "
        f"{config.inner_dim} wide), batch {args.batch}, {tokens} tokens, {args.dtype}, attention {args.attention}")
  print("| ours ms | diffusers ms | ratio ours/diffusers | GFLOP per forward (XLA) | ours TFLOP/s |")
  print("|---:|---:|---:|---:|---:|")
  ratio = "-" if ref_ms is None else f"{ours_ms / ref_ms:.2f}"
  ref = "-" if ref_ms is None else f"{ref_ms:.0f}"
  print(f"| {ours_ms:.0f} | {ref} | {ratio} | {flops / 1e9:.1f} | {flops / ours_ms / 1e9:.3f} |")


if __name__ == "__main__":
  main()
