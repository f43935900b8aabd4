"""Training data for the Latent Large Reconstruction Model: datasets, clip sampling, latent cache, grain pipelines.

    scenes.py        RealEstate10K / ACID, DL3DV (nerfstudio), COLMAP readers; `scan_dataset`; bad-data policy
    clips.py         clip sampling (stride, unseen targets), re-basing + scale normalisation, resize / crop
    synthetic.py     procedural Gaussian scenes rendered with our rasterizer (exact ground truth)
    latent_cache.py  VAE-encoded clips in ArrayRecord shards: `prepare_latents`, `LatentCache`
    pipeline.py      grain pipelines: `make_train_iterator(data_config)` (checkpointable iterator state)

An example ("clip") is a dict of numpy arrays (a batch adds a leading B axis to each):

    frames             (F, H, W, 3) float32 in [0, 1]  the seen views, F = 1 + 4k (49 full size, 9 tiny)
    viewmats           (F, 4, 4) float32   world->camera, OpenCV axes; world = the first frame's camera, so
                                           viewmats[0] is the identity; translations scale-normalised
    intrinsics         (F, 3, 3) float32   pixels for H x W, pixel centres at +0.5
    target_images      (V, H, W, 3) float32 in [0, 1]  supervision views: num_target_seen frames of the clip,
                                           then num_target_unseen frames not in it (inside or outside its range)
    target_viewmats    (V, 4, 4) float32   same world and scale as viewmats
    target_intrinsics  (V, 3, 3) float32
    target_is_seen     (V,) bool           whether each target is one of the clip's frames
    frame_indices      (F,) int32          source-frame index of each seen frame (stride apart)
    target_indices     (V,) int32          source-frame index of each target
    pose_scale         () float32          the factor applied to translations by the normalisation
    scene_index        () int32            the scene's index in its dataset

Normalisation (`camera.normalize_poses`): re-based on the first frame, then scaled so that the clip camera
farthest from the first one is at distance 1 ('max_distance', the default scale_mode; the targets get the same
factor; 'extent_floor' caps the factor at scale_target / scale_floor for clips that barely move: docs/lalrm.md).
Records of a latent cache (`LatentCache`) have `latents` (T, H/8, W/8, C) float32 — the VAE posterior
mean times the VAE's scaling_factor, T = 1 + (F - 1) / 4 — instead of `frames`; every other key is the same
(target images quantised to 8 bits).
"""

from wonderland_jax.data.clips import (
                                       DEFAULT_STRIDES,
                                       ClipIndices,
                                       ClipSource,
                                       ClipSpec,
                                       clip_rng,
                                       crop_transform,
                                       make_clip,
                                       resize_and_crop,
                                       sample_clip,
                                       sample_indices,
)
from wonderland_jax.data.latent_cache import LatentCache
from wonderland_jax.data.latent_writer import make_encoder, prepare_latents
from wonderland_jax.data.pipeline import (
                                       DATA_DEFAULTS,
                                       clip_spec,
                                       data_config,
                                       eval_clips,
                                       make_clip_source,
                                       make_dataset,
                                       make_iterator,
                                       make_train_iterator,
                                       source_configs,
)
from wonderland_jax.data.scenes import (
                                       FORMATS,
                                       DataErrors,
                                       DatasetScan,
                                       Scene,
                                       SceneRef,
                                       read_colmap_scene,
                                       read_nerfstudio_scene,
                                       read_realestate10k_scene,
                                       scan_dataset,
)
from wonderland_jax.data.synthetic import (
                                       SyntheticDataset,
                                       family_camera_path,
                                       random_camera_path,
                                       random_scene,
                                       synthetic_scene,
                                       write_synthetic_dataset,
)
