"""One image -> a 3D Gaussian scene with the one-call API (`WonderlandPipeline`), on the shipped demo models.

    python docs/examples/image_to_scene.py photo.jpg --out scene_out/        # any image size
    python docs/examples/image_to_scene.py --out scene_out/                  # the demo's own input image
    wonderland view scene_out/scene.ply                                      # look at it (the viewer extra)
"""

import argparse

from wonderland_jax.checkpoints import read_description
from wonderland_jax.demo import demo_clip, weights_directory
from wonderland_jax.pipeline import WonderlandPipeline


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("image", nargs="?", default=None, help="PNG / JPEG (default: a synthetic demo scene's frame)")
  parser.add_argument("--model", default="demo", help="'demo' or a folder with pipeline/, branch/, lalrm/")
  parser.add_argument("--trajectory", default="orbit", help="a preset (orbit, dolly, ...) or a pose file")
  parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
  parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (default 1: the demo models')")
  parser.add_argument("--out", default="scene_out", help="output folder (default scene_out)")
  args = parser.parse_args()

  pipe = WonderlandPipeline.from_pretrained(args.model)
  image = args.image
  if image is None:  # the first frame of a held-out synthetic scene, as `wonderland demo` uses
    data = (read_description(weights_directory() / "branch")[2] or {}).get("trained_with", {}).get("data", {})
    image = demo_clip(data, 0)["frames"][0]
  result = pipe(image, trajectory=args.trajectory, num_frames=9, num_inference_steps=args.steps,
                guidance_scale=args.guidance, seed=0)
  names = result.save(args.out, overwrite=True)
  print(f"{result.gaussians.num} Gaussians; wrote {', '.join(names)} to {args.out}")


if __name__ == "__main__":
  main()
