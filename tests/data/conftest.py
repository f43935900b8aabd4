"""Shared fixtures of the data tests: one tiny clip spec (one rasterizer compile) and a RealEstate10K-layout
synthetic dataset written once per session."""

from __future__ import annotations

import pytest

from wonderland_jax.data import ClipSpec, write_synthetic_dataset

HEIGHT, WIDTH = 32, 48
SPEC = ClipSpec(num_frames=9, height=HEIGHT, width=WIDTH, stride=(1, 2), num_target_seen=2, num_target_unseen=2)
NUM_DISK_SCENES = 3
DISK_FRAMES = 24


@pytest.fixture(scope="session")
def re10k_root(tmp_path_factory):
  """root/poses/<name>.txt and root/frames/<name>/<timestamp>.png for synthetic scenes 0..2 (seed 0).
  Read-only: tests that break it copy it first."""
  root = tmp_path_factory.mktemp("re10k") / "dataset"
  write_synthetic_dataset(root, NUM_DISK_SCENES, height=HEIGHT, width=WIDTH, num_frames=DISK_FRAMES)
  return root
