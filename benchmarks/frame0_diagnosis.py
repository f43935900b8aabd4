"""Why does the generated frame 0 miss the input image? Separates the image condition, the model and the sampler.

    python benchmarks/frame0_diagnosis.py                          # the shipped demo weights, 4 held-out scenes
    python benchmarks/frame0_diagnosis.py --weights runs/mini/weights --scenes 16

On the held-out clips of `mini_wonderland.py` (same weights layout), per scene, PSNR (dB) of frame 0 against the
input image, decoded by the pipeline's VAE from:

  true_latent      the clip's own latent frame 0 (the ceiling: what the VAE can give)
  x0@t             the transformer's one-step estimate of the clean latents (teacher forcing: the clip's latents
                   noised to training timestep t, the image condition, the true cameras); at t = 999 (zero SNR)
                   frame 0 comes from the condition alone
  sample@N         the full DDIM sample with N steps (what the demo shows)

and the RMS distance, in scaled latent units, of the condition from the clip's latent frame 0 and of x0@t's
frame 0 from it. If the condition is close but x0@999 is not, the model has not learnt to carry the image
through; if x0 is close but the sample is not, the sampler drifts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import mini_wonderland  # noqa: E402

TIMESTEPS = (50, 250, 500, 750, 999)
SAMPLE_STEPS = (25, 100)


def diagnose(weights: Path, num_scenes: int) -> dict[str, list[float]]:
  from wonderland_jax.camera import Camera  # noqa: PLC0415
  from wonderland_jax.diffusion.sampling import _condition, encode_image  # noqa: PLC0415
  from wonderland_jax.diffusion.schedulers import add_noise, make_tables, predict_original_sample  # noqa: PLC0415
  from wonderland_jax.models.t5 import encode_prompt  # noqa: PLC0415
  from wonderland_jax.models.vae import encode_frames  # noqa: PLC0415
  from wonderland_jax.pipeline import WonderlandPipeline  # noqa: PLC0415

  video = WonderlandPipeline.load(weights / "pipeline", weights / "branch", weights / "lalrm").video
  pipe = video.pipeline
  vae, dit = pipe.vae, pipe.transformer
  tables = make_tables(pipe.scheduler)
  text = encode_prompt(pipe.tokenizer, pipe.text_encoder, [""], dit.config.max_text_seq_length)

  def frame0(latents):  # scaled latents (1, t, h, w, C) -> frame 0 in [0, 1]
    return np.clip((np.asarray(vae.decode(vae.config.unscale_latents(latents[:, :1]))[0]) + 1) / 2, 0, 1)

  def rms(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))

  rows: dict[str, list[float]] = {}
  for index, clip in enumerate(mini_wonderland.held_out_clips(weights, num_scenes)):
    truth = clip["frames"]
    height, width = truth.shape[1:3]
    cameras = Camera.from_viewmat(clip["viewmats"], clip["intrinsics"], width, height)
    plucker = video.plucker(cameras, height, width)
    latents = vae.config.scale_latents(encode_frames(vae, jnp.asarray(truth)[None]))
    image = encode_image(vae, jnp.asarray(truth[:1]) * 2 - 1, jnp.zeros((1, 1) + latents.shape[2:]))
    condition = _condition(image, latents.shape[1], dit.config.patch_size_t)
    key = jax.random.key(index)
    noise = jax.random.normal(key, latents.shape)
    found = {"true_latent": mini_wonderland.psnr(frame0(latents), truth[:1]),
             "condition_rms": rms(image[:, 0], latents[:, 0])}
    for t in TIMESTEPS:
      timestep = jnp.array([t], jnp.int32)
      noisy = add_noise(tables, latents, noise, timestep)
      x0 = predict_original_sample(tables, dit(jnp.concatenate([noisy, condition], -1), text, timestep, plucker),
                                   timestep, noisy)
      found[f"x0@{t}"] = mini_wonderland.psnr(frame0(x0), truth[:1])
      found[f"x0@{t}_rms"] = rms(x0[:, 0], latents[:, 0])
    for steps in SAMPLE_STEPS:
      _, frames = video.generate(truth[0], "", cameras, num_inference_steps=steps, guidance_scale=1.0, key=key)
      found[f"sample@{steps}"] = mini_wonderland.psnr(frames[:1], truth[:1])
    for name, value in found.items():
      rows.setdefault(name, []).append(value)
    print(f"  scene {index}: " + ", ".join(f"{name} {value:.3f}" for name, value in found.items()), flush=True)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", type=Path, default=None, help="folder with pipeline/, branch/, lalrm/ "
                                                                 "(default: the shipped demo weights)")
  parser.add_argument("--scenes", type=int, default=4, help="held-out scenes (default 4)")
  args = parser.parse_args()
  if args.weights is None:
    from wonderland_jax.demo import weights_directory  # noqa: PLC0415
    args.weights = weights_directory()
  rows = diagnose(args.weights, args.scenes)
  print(f"\n| measure ({args.scenes} scenes, {args.weights}) | mean |\n|---|---:|")
  for name, values in rows.items():
    print(f"| {name} | {np.mean(values):.3f} |")


if __name__ == "__main__":
  main()
