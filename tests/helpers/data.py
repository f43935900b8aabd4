"""The data tests' clip spec (one rasterizer compile for all) and the size of their on-disk dataset."""

from wonderland_jax.data import ClipSpec

HEIGHT, WIDTH = 32, 48


SPEC = ClipSpec(num_frames=9, height=HEIGHT, width=WIDTH, stride=(1, 2), num_target_seen=2, num_target_unseen=2)


NUM_DISK_SCENES = 3


DISK_FRAMES = 24
