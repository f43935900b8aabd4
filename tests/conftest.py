"""Test set-up: 8 fake CPU devices (set before jax is imported), offline Hugging Face, and the tiny models several
test modules share, built once per session (read-only: a test that changes one copies it first)."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole run, shared by the test processes, the CLI subprocesses they start
# and the pytest-xdist workers: the tiny models' initialisers and steps compile once, not in every process.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the run makes it and removes it
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="wonderland-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402 (after the environment above)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
  """A converted tiny CogVideoX pipeline: 4x VAE, 4 latent channels, 8x8 latents (32x32 videos)."""
  from tests.helpers.pipelines import make_converted  # noqa: PLC0415 (torch / diffusers, when used)
  return make_converted(tmp_path_factory)


@pytest.fixture(scope="session")
def branch(converted, tmp_path_factory):
  """A camera branch with random weights on `converted`'s transformer."""
  from tests.helpers.pipelines import make_branch  # noqa: PLC0415
  return make_branch(converted, tmp_path_factory)


@pytest.fixture(scope="session")
def lalrm(tmp_path_factory):
  """A random tiny LaLRM reading `converted`'s latents."""
  from tests.helpers.pipelines import make_lalrm  # noqa: PLC0415
  return make_lalrm(tmp_path_factory)
