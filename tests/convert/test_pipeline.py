"""`wonderland convert cogvideox`: a whole tiny pipeline folder written by diffusers / transformers."""

import json

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.convert.pipeline import PIPELINE_JSON, read_pipeline
from wonderland_jax.models.dit import CogVideoXTransformer
from wonderland_jax.models.t5 import T5Encoder
from wonderland_jax.models.vae import CogVideoXVAE


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("cogvideox")
  torch.manual_seed(0)
  AutoencoderKLCogVideoX(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                         down_block_types=("CogVideoXDownBlock3D",) * 2,
                         up_block_types=("CogVideoXUpBlock3D",) * 2).save_pretrained(root / "vae")
  CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4,
                              time_embed_dim=12, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8,
                              sample_frames=9, max_text_seq_length=7,
                              use_rotary_positional_embeddings=True).save_pretrained(root / "transformer",
                                                                                     max_shard_size="20KB")
  T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4,
                          feed_forward_proj="gated-gelu")).save_pretrained(root / "text_encoder")
  (root / "tokenizer").mkdir()
  (root / "tokenizer" / "spiece.model").write_bytes(b"sentencepiece model bytes")
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "CogVideoXDDIMScheduler"}))
  return root


def test_converts_every_component(tmp_path, pipeline_root):
  out = tmp_path / "converted"
  assert main(["convert", "cogvideox", "--src", str(pipeline_root), "--out", str(out)]) == 0
  assert isinstance(checkpoints.load(out / "vae"), CogVideoXVAE)
  assert isinstance(checkpoints.load(out / "transformer"), CogVideoXTransformer)
  assert isinstance(checkpoints.load(out / "text_encoder"), T5Encoder)
  assert (out / "tokenizer" / "spiece.model").read_bytes() == b"sentencepiece model bytes"
  assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
      "CogVideoXDDIMScheduler"
  description = read_pipeline(out)
  assert description["components"] == ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
  assert description["reports"]["transformer"]["num_params"] > 0


def test_components_subset_and_errors(tmp_path, pipeline_root, capsys):
  out = tmp_path / "subset"
  assert main(["convert", "cogvideox", "--src", str(pipeline_root), "--out", str(out),
               "--components", "vae,scheduler"]) == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(["vae", "scheduler", PIPELINE_JSON])
  assert main(["convert", "cogvideox", "--src", str(pipeline_root), "--out", str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert main(["convert", "cogvideox", "--src", str(pipeline_root), "--out", str(out), "--overwrite",
               "--components", "tokenizer"]) == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(["tokenizer", PIPELINE_JSON])
  # A missing component or a broken one: an error naming it and nothing written.
  broken = tmp_path / "broken_root"
  (broken / "vae").mkdir(parents=True)
  (broken / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 16]}))
  (broken / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00")
  for components, message in (("vae,transformer", "transformer/"), ("vae", "diffusion_pytorch_model")):
    assert main(["convert", "cogvideox", "--src", str(broken), "--out", str(tmp_path / "never"),
                 "--components", components]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
  assert main(["convert", "vae", "--src", str(pipeline_root), "--out", str(tmp_path / "x"),
               "--components", "vae"]) == 2
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directories left behind"


def test_a_diffusers_folder_loads_directly_and_equals_the_converted_copy(converted, branch, lalrm, tmp_path):
  """`VideoPipeline.load` / `WonderlandPipeline.load` of the diffusers folder itself: converted in memory,
  nothing written, the same params and the same scene as from the converted copy."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from wonderland_jax.camera import make_trajectory  # noqa: PLC0415
  from wonderland_jax.diffusion.pipeline import VideoPipeline, is_diffusers_pipeline  # noqa: PLC0415
  from wonderland_jax.pipeline import WonderlandPipeline, generate_scene  # noqa: PLC0415
  source = converted.parent  # the diffusers folders the session fixture converted
  assert is_diffusers_pipeline(source) and not is_diffusers_pipeline(converted)
  before = sorted(path.name for path in source.iterdir())
  direct, copy = VideoPipeline.load(source), VideoPipeline.load(converted)
  for name in ("transformer", "vae", "text_encoder"):
    ours, theirs = (nnx.to_pure_dict(nnx.state(getattr(pipe, name), nnx.Param)) for pipe in (direct, copy))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ours, theirs)
  assert sorted(path.name for path in source.iterdir()) == before  # nothing written beside the source
  cameras = make_trajectory("orbit", 9, width=32, height=32)
  image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
  scenes = [generate_scene(WonderlandPipeline.load(folder, branch, lalrm), image, cameras, "a hall",
                           key=jax.random.key(1), num_inference_steps=2)[0] for folder in (source, converted)]
  np.testing.assert_allclose(scenes[0].means, scenes[1].means, rtol=1e-6, atol=1e-6)


def test_sharded_index_wins_over_a_stale_single_file_as_in_diffusers(tmp_path, caplog):
  """A folder with both diffusion_pytorch_model.safetensors (stale) and a sharded index: we read what diffusers
  reads (the shards) and warn."""
  import numpy as np  # noqa: PLC0415

  from wonderland_jax.convert.safetensors_io import open_source  # noqa: PLC0415
  make = lambda seed: (torch.manual_seed(seed), AutoencoderKLCogVideoX(
      block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
      down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2))[1]
  stale, fresh = make(0), make(1)
  stale.save_pretrained(tmp_path / "stale")
  fresh.save_pretrained(tmp_path / "vae", max_shard_size="20KB")  # sharded: an index and several files
  assert len(list((tmp_path / "vae").glob("*.safetensors"))) > 1
  (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(
      (tmp_path / "stale" / "diffusion_pytorch_model.safetensors").read_bytes())  # the stale single file
  reference = AutoencoderKLCogVideoX.from_pretrained(tmp_path / "vae").state_dict()
  with caplog.at_level("WARNING"):
    source = open_source(tmp_path / "vae")
  assert "reading the shards, as diffusers does" in caplog.text
  assert len(source.files) > 1 and sorted(source.keys()) == sorted(reference)
  for key, value in reference.items():
    np.testing.assert_array_equal(source.read(key), value.numpy(), err_msg=key)
  assert not np.array_equal(source.read("encoder.conv_in.conv.weight"),
                            stale.state_dict()["encoder.conv_in.conv.weight"].numpy())
