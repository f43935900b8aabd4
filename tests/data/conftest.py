"""Shared fixtures of the data tests (their clip spec and sizes: tests/helpers/data.py): a RealEstate10K-layout
synthetic dataset written once per session."""

from __future__ import annotations

import pytest

from tests.helpers.data import DISK_FRAMES, HEIGHT, NUM_DISK_SCENES, WIDTH
from wonderland_jax.data import write_synthetic_dataset


@pytest.fixture(scope="session")
def re10k_root(tmp_path_factory):
  """root/poses/<name>.txt and root/frames/<name>/<timestamp>.png for synthetic scenes 0..2 (seed 0).
  Read-only: tests that break it copy it first."""
  root = tmp_path_factory.mktemp("re10k") / "dataset"
  write_synthetic_dataset(root, NUM_DISK_SCENES, height=HEIGHT, width=WIDTH, num_frames=DISK_FRAMES)
  return root
