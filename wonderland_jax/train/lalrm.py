"""Training the LaLRM: render the predicted Gaussians at seen and unseen views, MSE + lambda * VGG-19.

    wonderland train lalrm --config configs/lalrm_tiny.py --workdir runs/lalrm_tiny

A batch (see `wonderland_jax.data`) holds either the clip's `latents` (B, t, h, w, 16) - from the latent
cache - or its `frames` (B, F, H, W, 3) in [0, 1], which the frozen VAE encodes inside the step (posterior
mean times the VAE's scaling factor: the latents the video generator produces). With `viewmats` /
`intrinsics` (B, F, ...) of the seen frames and the supervision views `target_images` (B, V, H, W, 3),
`target_viewmats`, `target_intrinsics`. The rays of the seen frames make the Plücker input (in the first
camera's frame, which the data pipeline already made the world frame); the Gaussians are rendered at the V
targets with the tile rasterizer, whose pair buffer has a static size (`render.capacity`, 0 = the exact
worst case F * H' * W' * tiles, affordable for small images; set it for large ones: an overflow stops the
step with an error naming the flag).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval import image_metrics
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig, predict
from wonderland_jax.models.vae import encode_frames, load_vae
from wonderland_jax.splat.rasterize import rasterize
from wonderland_jax.train.config import pose_normalization, step_pose_normalization
from wonderland_jax.train.loop import Task

logger = logging.getLogger("wonderland_jax")


# `loss.vgg_weights` for ahead-of-time plans: a VGG-19 with random weights (the shapes are all a plan needs).
RANDOM_VGG = "random"


class LaLRMTrainee(nnx.Module):
  """What the loop trains: the LaLRM (trainable), plus the frozen VAE and VGG-19 when the config uses them."""

  def __init__(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.lalrm = LaLRM(LaLRMConfig.from_dict(config.model.to_dict()), rngs=rngs)
    if config.get("init_from"):
      initialize_from(self.lalrm, config.init_from)
    self.vae = load_vae(config.vae) if config.data.get("encode_frames", False) else None
    self.vgg = nnx.data(None)  # a module slot, filled below when the perceptual loss is on
    if float(config.loss.perceptual_weight) > 0:
      from wonderland_jax.models import vgg  # noqa: PLC0415
      if not config.loss.vgg_weights:
        raise WonderlandError("--config.loss.perceptual_weight > 0 needs --config.loss.vgg_weights=<torchvision "
                              "VGG-19 state_dict (.pth or .safetensors)>")
      if config.loss.vgg_weights == RANDOM_VGG:  # planning: the network's shapes only
        self.vgg = vgg.VGG("vgg19", rngs=nnx.Rngs(0))
      else:
        self.vgg = vgg.load_vgg(config.loss.vgg_weights, "vgg19")


def initialize_from(lalrm: LaLRM, directory: str) -> None:
  """Copies every param of the trained LaLRM in `directory` whose path and shape match (e.g. stage 1 -> stage 2,
  where only the deconv changes shape); the others keep their fresh initialisation and are logged."""
  source = nnx.to_pure_dict(nnx.state(checkpoints.load(directory), nnx.Param))
  target = nnx.state(lalrm, nnx.Param)
  flat_source = dict(jax.tree_util.tree_leaves_with_path(source))
  copied, fresh = 0, []
  for path, variable in jax.tree_util.tree_leaves_with_path(target, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    value = flat_source.get(path)
    if value is not None and value.shape == variable.shape:
      variable.set_value(jnp.asarray(value, variable.dtype))
      copied += 1
    else:
      fresh.append(jax.tree_util.keystr(path))
  if not copied:
    raise WonderlandError(f"--config.init_from={directory}: no parameter of that model matches this config")
  logger.info("lalrm: %d tensors from %s, %d fresh (%s)", copied, directory, len(fresh), ", ".join(fresh) or "none")


def _cameras(viewmats, intrinsics, height: int, width: int) -> Camera:
  return Camera(viewmat=viewmats, K=intrinsics, width=width, height=height)


def render_capacity(config: ml_collections.ConfigDict, lalrm_config: LaLRMConfig, num_frames: int, height: int,
                    width: int) -> int:
  """`render.capacity`, or (0) the worst case: every Gaussian in every tile."""
  if int(config.render.capacity) > 0:
    return int(config.render.capacity)
  tile = int(config.render.tile_size)
  tiles = -(-height // tile) * -(-width // tile)
  down = lalrm_config.map_downsample
  return num_frames * (height // down) * (width // down) * tiles


def render_targets(gaussians, target_viewmats, target_intrinsics, height: int, width: int, *, capacity: int,
                   config: ml_collections.ConfigDict) -> jax.Array:
  """Batched Gaussians (B, N, ...) at the targets' cameras (B, V, ...) -> images (B, V, H, W, 3).

  `render.views_per_pass` (0 / absent: all V at once) renders the views in groups of that many, one group after
  the other, each rematerialised in the backward pass: the rasterizer's pair buffers of one group live at a
  time instead of V (the high-res step's memory), for the cost of rendering twice."""
  background = jnp.asarray(config.render.background, jnp.float32)
  per_pass = int(config.render.get("views_per_pass", 0) or 0)
  num_views = target_viewmats.shape[1]
  if per_pass and num_views % per_pass:
    raise WonderlandError(f"--config.render.views_per_pass={per_pass} must divide the {num_views} supervision views")

  def one(scene, viewmats, intrinsics):
    def render(views):
      return rasterize(scene, _cameras(*views, height, width), background=background,
                       tile_size=int(config.render.tile_size), capacity=capacity).image
    if not per_pass or per_pass >= num_views:
      return render((viewmats, intrinsics))
    groups = lambda x: x.reshape(num_views // per_pass, per_pass, *x.shape[1:])
    images = jax.lax.map(jax.checkpoint(render), (groups(viewmats), groups(intrinsics)))
    return images.reshape(num_views, *images.shape[2:])

  return jax.vmap(one)(gaussians, target_viewmats, target_intrinsics)


def render_batch(lalrm: LaLRM, vae, batch: dict, config: ml_collections.ConfigDict) -> jax.Array:
  """A batch of clips -> the predicted scenes rendered at their supervision views (B, V, H, W, 3): latents from
  the batch (latent cache) or encoded by the frozen `vae`, Gaussians, rasterizer."""
  height, width = batch["target_images"].shape[2:4]
  latents = batch.get("latents")
  if latents is None:
    if vae is None:
      raise WonderlandError("the batch has frames, not latents: set --config.data.encode_frames=True (and a VAE) "
                            "or train from a latent cache")
    latents = encode_frames(vae, batch["frames"])
  _, gaussians = predict(lalrm, latents, batch["viewmats"], batch["intrinsics"], height, width,
                         **step_pose_normalization(config))
  capacity = render_capacity(config, lalrm.config, batch["viewmats"].shape[1], height, width)
  return render_targets(gaussians, batch["target_viewmats"], batch["target_intrinsics"], height, width,
                        capacity=capacity, config=config)


def lalrm_loss(model: LaLRMTrainee, batch: dict, key: jax.Array, *, config: ml_collections.ConfigDict):
  """(loss, metrics): MSE + perceptual_weight * VGG-19 perceptual over all supervision views."""
  del key
  targets = batch["target_images"]
  renders = render_batch(model.lalrm, model.vae, batch, config)
  mse = jnp.mean((renders - targets) ** 2)
  metrics = {"mse": mse, "psnr": jnp.mean(image_metrics.psnr(renders, targets))}
  loss = mse
  if model.vgg is not None:
    from wonderland_jax.models import vgg  # noqa: PLC0415
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    perceptual = vgg.perceptual_loss(model.vgg, flat(renders), flat(targets))
    metrics["perceptual"] = perceptual
    loss = loss + float(config.loss.perceptual_weight) * perceptual
  return loss, metrics


def _stack(clips: list[dict]) -> dict:
  return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}


def eval_clips(config: ml_collections.ConfigDict) -> dict:
  """The held-out clips (a batch dict): synthetic scenes from a seed the training scenes never use."""
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  return _stack(pipeline.eval_clips(config))


@functools.partial(nnx.jit, static_argnames=("config_json",))
def _eval_renders(lalrm, vae, batch, config_json):
  return render_batch(lalrm, vae, batch, ml_collections.ConfigDict(json.loads(config_json)))


def evaluate_reconstruction(lalrm: LaLRM, vae, batch: dict, config: ml_collections.ConfigDict,
                            lpips_model=None) -> tuple[dict, np.ndarray]:
  """Novel-view metrics of `lalrm` on a batch of clips, averaged over all supervision views, and the mean
  colour baseline (every pixel of every target = the mean colour of the clip's seen frames)."""
  batch = {key: jnp.asarray(value) for key, value in batch.items() if key not in ("frame_indices", "target_indices")}
  config_json = json.dumps(config.to_dict(), sort_keys=True, default=list)
  renders = _eval_renders(lalrm, vae, batch, config_json)
  targets = batch["target_images"]
  frames = batch["frames"] if "frames" in batch else None
  scalars = {"psnr": float(jnp.mean(image_metrics.psnr(renders, targets))),
             "ssim": float(jnp.mean(image_metrics.ssim(renders, targets)))}
  if frames is not None:
    mean_colour = jnp.mean(frames, axis=(1, 2, 3), keepdims=True)
    baseline = jnp.broadcast_to(mean_colour, targets.shape)
    scalars["baseline_psnr"] = float(jnp.mean(image_metrics.psnr(baseline, targets)))
    scalars["baseline_ssim"] = float(jnp.mean(image_metrics.ssim(baseline, targets)))
  if lpips_model is not None:
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    scalars["lpips"] = float(jnp.mean(image_metrics.lpips(lpips_model, flat(renders), flat(targets))))
  return scalars, np.asarray(renders)


def lalrm_task(config: ml_collections.ConfigDict) -> Task:
  """The shared loop's Task for the LaLRM (trainable: the LaLRM's params; VAE and VGG frozen)."""
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  held_out: dict = {}
  lpips_model = None
  if config.lpips.get("backbone_weights"):
    from wonderland_jax.models import vgg  # noqa: PLC0415
    lpips_model = vgg.load_lpips(config.lpips.backbone_weights, config.lpips.heads_weights, net="vgg")

  def evaluate(model: LaLRMTrainee, config):
    if not held_out:
      held_out.update(eval_clips(config))
    scalars, renders = evaluate_reconstruction(model.lalrm, model.vae, held_out, config, lpips_model)
    panel = np.concatenate([renders[0, 0], held_out["target_images"][0, 0]], axis=1)  # render | ground truth
    return scalars, {"render_vs_ground_truth": panel}

  def export(model: LaLRMTrainee, config, directory: Path):
    metadata = {"trained_with": config.to_dict(), checkpoints.POSE_NORMALIZATION: pose_normalization(config)}
    checkpoints.save(directory, model.lalrm, kind="lalrm", config=model.lalrm.config.to_dict(), overwrite=True,
                     metadata=metadata)
    if model.vae is not None and not config.vae.get("checkpoint"):
      checkpoints.save(directory.parent / "vae", model.vae, kind="cogvideox_vae",
                       config=model.vae.config.to_dict(), overwrite=True)
    logger.info("lalrm: wrote the trained model to %s", directory)

  return Task(name="lalrm", build_model=LaLRMTrainee, loss_fn=functools.partial(lalrm_loss, config=config),
              make_iterator=pipeline.make_train_iterator,
              trainable=nnx.All(nnx.Param, nnx.PathContains("lalrm")), evaluate=evaluate, export=export,
              abstract_batch=abstract_batch)


def abstract_batch(config: ml_collections.ConfigDict) -> dict:
  """The global batch the step takes, as shapes: latents (latent cache) or frames, cameras, supervision views."""
  model = LaLRMConfig.from_dict(config.model.to_dict())
  data = config.data
  batch, frames, height, width = int(config.train.batch_size), int(data.num_frames), int(data.height), int(data.width)
  views = int(data.num_target_seen) + int(data.num_target_unseen)
  shape = lambda *dims: jax.ShapeDtypeStruct((batch, *dims), jnp.float32)
  out = {"viewmats": shape(frames, 4, 4), "intrinsics": shape(frames, 3, 3), "target_images": shape(views, height,
         width, 3), "target_viewmats": shape(views, 4, 4), "target_intrinsics": shape(views, 3, 3)}
  if data.get("encode_frames", False):
    out["frames"] = shape(frames, height, width, 3)
  else:
    latent_frames = (frames - 1) // model.temporal_compression + 1
    out["latents"] = shape(latent_frames, height // model.spatial_compression, width // model.spatial_compression,
                           model.latent_channels)
  return out


def planning_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with a random VGG-19 and VAE (of the checkpoint's shapes when it is there)."""
  planned = ml_collections.ConfigDict(config.to_dict())
  with planned.unlocked():
    if float(config.loss.perceptual_weight) > 0:
      planned.loss.vgg_weights = RANDOM_VGG
    if config.data.get("encode_frames", False) and config.vae.get("checkpoint"):
      if Path(config.vae.checkpoint).is_dir():
        planned.vae.random_config = checkpoints.read_description(config.vae.checkpoint)[1]
      planned.vae.checkpoint = ""
  return planned
