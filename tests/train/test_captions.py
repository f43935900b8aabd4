"""Per-clip captions for camera-branch training (`train/captions.py`, `--config.text.captions`): the JSON-lines
file and its errors, the T5 table computed once per distinct prompt and cached (recomputed when the captions
change), each training clip's text = its scene's caption's embeddings (or the empty prompt's when dropped), and
the default (no captions) unchanged. Real layouts: a RealEstate10K-layout dataset on disk, the tiny converted
pipeline's T5 and sentencepiece tokenizer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.data import pipeline, write_synthetic_dataset
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models import t5
from wonderland_jax.models.t5_tokenizer import T5Tokenizer
from wonderland_jax.train import camera_dit as trainer
from wonderland_jax.train import captions
from wonderland_jax.train.config import load_config

# The converted pipeline's base: 8 text tokens of width 16.
MAX_LENGTH, WIDTH = 8, 16
DEFAULT_PROMPT = "a small red boat on a lake"
CAPTIONS = {"synthetic00000": "a castle at dusk", "synthetic00001": "snow on the mountains"}  # 00002: uncaptioned


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """root/poses/synthetic0000{0,1,2}.txt and their frames (RealEstate10K layout, 32x32, 12 frames)."""
  root = tmp_path_factory.mktemp("captioned") / "re10k"
  write_synthetic_dataset(root, 3, height=32, width=32, num_frames=12)
  return root


def _write_captions(path, captions, *extra_lines):
  lines = [json.dumps({"id": scene_id, "prompt": prompt}) for scene_id, prompt in captions.items()]
  path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
  return path


def _args(converted, dataset, captions_file, embeddings, *extra):
  return ["--config.base.pipeline=" + str(converted), "--config.base.random_config={}",
          "--config.camera.spatial_compression=4", "--config.camera.controlnet_layers=1",
          "--config.camera.lora_rank=2", "--config.camera.encoder_channels=8", "--config.train.batch_size=3",
          "--config.data.source=scenes", "--config.data.format=realestate10k", f"--config.data.root={dataset}",
          f"--config.data.eval_root={dataset}", "--config.data.num_eval_scenes=3",
          f"--config.text.captions={captions_file}", f"--config.text.embeddings={embeddings}",
          f"--config.text.prompt={DEFAULT_PROMPT}", *extra]


def _reference(converted, prompts):
  """(n, L, D) the prompts' embeddings, each encoded on its own."""
  tokenizer = T5Tokenizer.from_folder(converted / "tokenizer")
  encoder = checkpoints.load(converted / "text_encoder")
  return np.stack([np.asarray(t5.encode_prompt(tokenizer, encoder, [prompt], MAX_LENGTH))[0] for prompt in prompts])


def test_read_captions_and_its_errors(tmp_path):
  path = tmp_path / "captions.jsonl"
  path.write_text('{"id": "a", "prompt": "a castle at dusk"}\n\n   \n{"prompt": "line\\u2028break", "id": "b/c"}\n'
                  '{"id": "d", "prompt": ""}', encoding="utf-8")
  assert captions.read_captions(path) == {"a": "a castle at dusk", "b/c": "line\u2028break", "d": ""}
  path.write_text('{"id": "a", "prompt": "x\u2028y"}\n', encoding="utf-8")  # a raw U+2028 is inside a string
  assert captions.read_captions(path) == {"a": "x\u2028y"}
  path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "p"}\r\n')  # a byte-order mark, Windows line ends
  assert captions.read_captions(path) == {"a": "p"}
  bad = {
    '{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt": \n': r"captions.jsonl:3: not a JSON object",
    '{"id": "a", "prompt": "p", "text": "q"}\n': r"captions.jsonl:1: unknown key\(s\) 'text'",
    '{"id": "a"}\n': r"captions.jsonl:1: missing key 'prompt'",
    '{"id": 3, "prompt": "p"}\n': r"captions.jsonl:1: 'id' must be a string, got int",
    '["a", "p"]\n': r"captions.jsonl:1: expected an object",
    '{"id": "", "prompt": "p"}\n': r"captions.jsonl:1: empty 'id'",
    '{"id": "a", "prompt": "p"}\n{"id": "b", "prompt": "q"}\n{"id": "a", "prompt": "r"}\n':
        r"captions.jsonl:3: duplicate id 'a' \(first on line 1\)",
    "\n\n": r"captions.jsonl: no captions",
  }
  for text, message in bad.items():
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputFileError, match=message):
      captions.read_captions(path)
  with pytest.raises(InputFileError, match=r"missing.jsonl: captions file not found"):
    captions.read_captions(tmp_path / "missing.jsonl")


def test_the_table_is_computed_once_per_distinct_prompt_and_cached(tmp_path, converted, monkeypatch):
  encoded = []
  encode_prompt = t5.encode_prompt

  def counting(tokenizer, encoder, prompts, max_length, **kwargs):
    encoded.append(list(prompts))
    return encode_prompt(tokenizer, encoder, prompts, max_length, **kwargs)

  monkeypatch.setattr(t5, "encode_prompt", counting)
  monkeypatch.setattr(captions, "ENCODE_BATCH", 2)  # 3 prompts: 2 batches, the last padded
  cache = tmp_path / "text.npz"
  prompts = ["snow on the mountains", "a castle at dusk", "snow on the mountains", ""]
  build = lambda prompts: captions.caption_table(prompts, converted, max_length=MAX_LENGTH, text_embed_dim=WIDTH,
                                                 cache=cache)
  table = build(prompts)
  distinct = ("", "a castle at dusk", "snow on the mountains")
  assert table.prompts == distinct
  assert encoded == [["", "a castle at dusk"], ["snow on the mountains", "snow on the mountains"]]
  reference = _reference(converted, distinct)
  assert table.embeds.shape == (3, MAX_LENGTH, WIDTH) and np.abs(reference[1] - reference[2]).max() > 1e-3
  np.testing.assert_allclose(table.embeds, reference, atol=1e-5)  # batching does not change a prompt's embeddings
  rows_path, index_path = captions.cache_paths(cache)
  assert rows_path.name == "text.captions.npy" and index_path.name == "text.captions.npz"
  with np.load(index_path) as index:  # no pickle: a unicode array of the prompts and the key
    assert index["prompts"].dtype.kind == "U" and tuple(index["prompts"]) == distinct
  # Second run, same captions: read from the cache (memory-mapped), T5 not run.
  encoded.clear()
  again = build(reversed(prompts))
  assert encoded == [] and isinstance(again.embeds, np.memmap)
  np.testing.assert_array_equal(again.embeds, table.embeds)
  # Changed captions: recomputed (and the cache overwritten).
  changed = build(["a castle at dusk", "the camera flies over green hills"])
  assert encoded == [["a castle at dusk", "the camera flies over green hills"]]
  np.testing.assert_allclose(changed.embeds[0], reference[1], atol=1e-5)
  encoded.clear()
  build(["a castle at dusk", "the camera flies over green hills"])
  assert encoded == []
  # Without a cache file the table is held in memory, up to MAX_IN_MEMORY_BYTES.
  in_memory = captions.caption_table(prompts, converted, max_length=MAX_LENGTH, text_embed_dim=WIDTH)
  np.testing.assert_allclose(in_memory.embeds, reference, atol=1e-5)
  monkeypatch.setattr(captions, "MAX_IN_MEMORY_BYTES", 1000)
  with pytest.raises(WonderlandError, match=r"set --config.text.embeddings"):
    captions.caption_table(prompts, converted, max_length=MAX_LENGTH, text_embed_dim=WIDTH)
  with pytest.raises(InputFileError, match=r"text_encoder: the text encoder's width is 16"):
    captions.caption_table(prompts, converted, max_length=MAX_LENGTH, text_embed_dim=32, cache=tmp_path / "x.npz")


def test_the_key_names_prompts_length_tokenizer_and_encoder(tmp_path):
  tokenizer, encoder = tmp_path / "tokenizer", tmp_path / "text_encoder"
  for folder in (tokenizer, encoder):
    folder.mkdir()
  (tokenizer / "spiece.model").write_bytes(b"one")
  (encoder / "wonderland_model.json").write_text('{"config": 1}')
  key = lambda prompts=("a",), length=8: captions.table_key(prompts, tokenizer, encoder, length)
  first = key()
  assert key() == first and key(("a", "b")) != first and key(length=9) != first
  (tokenizer / "spiece.model").write_bytes(b"two")
  second = key()
  (encoder / "wonderland_model.json").write_text('{"config": 2}')
  assert len({first, second, key()}) == 3


def _text(model, config, batch, key=jax.random.key(0)):
  """(B, L, D) the text `diffusion_inputs` gives `model` for `batch` (numpy arrays)."""
  tables = trainer.make_tables(trainer.scheduler_config(config))
  inputs = {name: jnp.asarray(batch[name]) for name in ("frames", "viewmats", "intrinsics", "text_embeds")
            if name in batch}
  return np.asarray(trainer.diffusion_inputs(model, inputs, key, tables=tables, config=config)[1])


def test_each_training_clip_gets_its_captions_embeddings(tmp_path, converted, dataset):
  captions_file = _write_captions(tmp_path / "captions.jsonl", CAPTIONS)
  prompt_of = lambda index: CAPTIONS.get(f"synthetic{int(index):05d}", DEFAULT_PROMPT)
  reference = dict(zip([*CAPTIONS.values(), DEFAULT_PROMPT, ""],
                       _reference(converted, [*CAPTIONS.values(), DEFAULT_PROMPT, ""])))
  config = load_config("camera_dit_tiny", _args(converted, dataset, captions_file, tmp_path / "text.npz"))
  iterator = trainer.camera_dit_task(config).make_iterator(config)
  batch = next(iterator)
  assert sorted(batch["scene_index"].tolist()) == [0, 1, 2] and batch["text_embeds"].shape == (3, MAX_LENGTH, WIDTH)
  model = trainer.CameraDiTTrainee(config, nnx.Rngs(0))
  np.testing.assert_allclose(model.empty_embeds[...], reference[""], atol=1e-5)
  key = jax.random.key(3)
  for dropout in (0.0, 1.0, 0.5):
    with config.unlocked():
      config.text.dropout = dropout
    text = _text(model, config, batch, key)
    dropped = np.asarray(jax.random.uniform(jax.random.fold_in(key, 7), (3,)) < dropout)
    for clip, scene_index in enumerate(batch["scene_index"]):
      expected = reference["" if dropped[clip] else prompt_of(scene_index)]
      np.testing.assert_allclose(text[clip], expected, atol=1e-5, err_msg=f"dropout {dropout}, clip {clip}")
    if dropout == 0.5:
      assert 0 < dropped.sum() < 3, dropped  # this key drops some clips, not all
  # The iterator's state is the data pipeline's: a restored iterator gives the same next batch and text.
  state = iterator.get_state()
  following = next(iterator)
  iterator.set_state(state)
  np.testing.assert_array_equal(next(iterator)["text_embeds"], following["text_embeds"])
  # The plan's batch has the clips' text too.
  assert trainer.abstract_batch(trainer.planning_config(config))["text_embeds"].shape == (3, MAX_LENGTH, WIDTH)


def test_trains_with_captions_and_evaluates_on_the_held_out_captions(tmp_path, converted, dataset):
  captions_file = _write_captions(tmp_path / "captions.jsonl", CAPTIONS)
  cache = tmp_path / "cache" / "text.npz"
  args = _args(converted, dataset, captions_file, cache, "--config.train.batch_size=1", "--config.train.eval_every=2",
               "--config.data.num_eval_scenes=2")
  assert main(["train", "camera-dit", "--config", "camera_dit_tiny", "--workdir", str(tmp_path / "run"),
               "--config.train.steps=2", *args]) == 0
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert any(np.isfinite(record.get("eval/v_mse", np.nan)) for record in records)
  with np.load(captions.cache_paths(cache)[1]) as index:
    assert tuple(index["prompts"]) == tuple(sorted([*CAPTIONS.values(), DEFAULT_PROMPT]))
  # The held-out clips' text is their scenes' captions.
  config = load_config("camera_dit_tiny", args)
  clips = pipeline.eval_clips(config)
  scene_index = np.stack([clip["scene_index"] for clip in clips])
  embeds = captions.ClipCaptions(config).held_out_embeds(config, scene_index)
  reference = _reference(converted, [CAPTIONS.get(f"synthetic{int(i):05d}", DEFAULT_PROMPT) for i in scene_index])
  np.testing.assert_allclose(embeds, reference, atol=1e-5)


def test_caption_configuration_errors(tmp_path, converted, dataset):
  good = _write_captions(tmp_path / "captions.jsonl", CAPTIONS)
  config = load_config("camera_dit_tiny", _args(converted, dataset, good, "", "--config.base.pipeline="))
  with pytest.raises(WonderlandError, match=r"text.captions needs a text encoder: set --config.base.pipeline"):
    trainer.camera_dit_task(config).make_iterator(config)
  foreign = _write_captions(tmp_path / "foreign.jsonl", {"poses/synthetic00000": "a castle at dusk"})
  config = load_config("camera_dit_tiny", _args(converted, dataset, foreign, ""))
  with pytest.raises(InputFileError, match=r"foreign.jsonl: none of its 1 ids is a training scene id .*"
                                           r"'synthetic00000'.*'poses/synthetic00000'"):
    trainer.camera_dit_task(config).make_iterator(config)
  config = load_config("camera_dit_tiny", _args(converted, dataset, good, ""))
  with config.unlocked():
    config.data.root = config.data.eval_root = None
    config.data.sources = {"a": dict(source="realestate10k", root=str(dataset)), "b": dict(source="synthetic")}
  with pytest.raises(WonderlandError, match=r"works with one data source; data.sources mixes 2 \(a, b\)"):
    trainer.camera_dit_task(config).make_iterator(config)


def test_without_captions_every_clip_has_the_fixed_prompt(converted):
  config = load_config("camera_dit_tiny", [
      "--config.base.pipeline=" + str(converted), "--config.base.random_config={}",
      "--config.camera.spatial_compression=4", "--config.camera.controlnet_layers=1",
      "--config.camera.encoder_channels=8", "--config.train.batch_size=2", f"--config.text.prompt={DEFAULT_PROMPT}",
      "--config.text.dropout=0"])
  assert config.text.captions == ""
  task = trainer.camera_dit_task(config)
  assert task.make_iterator is pipeline.make_train_iterator
  assert set(trainer.abstract_batch(trainer.planning_config(config))) == {"frames", "viewmats", "intrinsics"}
  batch = {name: value[:2] for name, value in next(task.make_iterator(config)).items()}
  assert "text_embeds" not in batch
  model = trainer.CameraDiTTrainee(config, nnx.Rngs(0))
  text = _text(model, config, batch)
  reference = _reference(converted, [DEFAULT_PROMPT])[0]
  np.testing.assert_allclose(model.prompt_embeds[...], reference, atol=1e-5)
  np.testing.assert_allclose(text, np.broadcast_to(reference, text.shape), atol=1e-5)
