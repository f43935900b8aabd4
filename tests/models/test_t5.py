"""The T5 text encoder and tokenizer against transformers: tiny random `T5EncoderModel`s saved by transformers,
converted with the rule table and loaded; a tiny sentencepiece model trained here, tokenized by transformers'
`T5Tokenizer` and by ours; `encode_prompt` against the CogVideoX pipeline's `_get_t5_prompt_embeds` calls."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx

from tests.helpers.reference_models import make_t5_tokenizer, randomize_norms, save_reference
from wonderland_jax import checkpoints
from wonderland_jax.convert import ConversionError, convert_state, open_source
from wonderland_jax.convert import t5 as t5_convert
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models import t5
from wonderland_jax.models.t5_tokenizer import T5Tokenizer

CONFIGS = {
    "gated": dict(vocab_size=256, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
                  feed_forward_proj="gated-gelu"),
    # Fewer / narrower position buckets, so that long-range (logarithmic and saturated) buckets are exercised.
    "relu": dict(vocab_size=120, d_model=24, d_kv=6, d_ff=36, num_layers=3, num_heads=2, feed_forward_proj="relu",
                 relative_attention_num_buckets=16, relative_attention_max_distance=40),
}
LENGTH = 150  # > max_distance 128: every kind of bucket is used


def _reference(name: str, seed: int = 0) -> transformers.T5EncoderModel:
  torch.manual_seed(seed)
  return randomize_norms(transformers.T5EncoderModel(transformers.T5Config(**CONFIGS[name])).eval(), 0.2)


def _save(model, directory, *, bf16=False, sharded=False):
  return save_reference(model, directory, bf16=bf16, sharded=sharded, shard_size="20KB")


def _convert(folder, dtype=jnp.float32):
  """(our model, ConversionReport) from a saved transformers folder, through the rule table."""
  source = open_source(folder)
  config = t5_convert.config_from_source(source.config)
  abstract = checkpoints.abstract_model(t5.build, config)
  state, report = convert_state(source, t5_convert.RULES, abstract, dtype=dtype)
  return checkpoints.instantiate(t5.build, config, state), config, report


def _inputs(vocab_size, batch=3, length=LENGTH, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  for row, valid in enumerate((length, length - 7, 20)[:batch]):  # right padding, as the tokenizer does
    ids[row, valid - 1] = 1
    ids[row, valid:] = 0
    mask[row, valid:] = 0
  return ids, mask


def _assert_close(ours, reference, name, tolerance=1e-4):
  reference = reference.detach().float().numpy()
  assert ours.shape == reference.shape, name
  error = np.abs(np.asarray(ours, np.float32) - reference).max() / np.abs(reference).max()
  assert error <= tolerance, f"{name}: max error {error:.2e} relative to the reference's magnitude"


@pytest.mark.parametrize("name,save_kwargs", [
    ("gated", {}),
    ("gated", dict(sharded=True)),
    ("gated", dict(bf16=True)),
    ("relu", dict(bf16=True, sharded=True)),
    ("relu", {}),
])
def test_encoder_matches_transformers(tmp_path, name, save_kwargs):
  reference = _reference(name)
  folder = _save(reference, tmp_path / "text_encoder", **save_kwargs)
  if save_kwargs.get("sharded"):
    assert (folder / "model.safetensors.index.json").is_file()
  if save_kwargs.get("bf16"):  # the reference sees the same (rounded) weights as the converter
    reference = transformers.T5EncoderModel.from_pretrained(folder, dtype=torch.float32).eval()
  ours, config, report = _convert(folder)
  assert isinstance(ours, t5.T5Encoder) and config["feed_forward_proj"] == CONFIGS[name]["feed_forward_proj"]
  assert report.num_params == sum(p.numel() for p in reference.parameters())
  ids, mask = _inputs(CONFIGS[name]["vocab_size"])
  with torch.no_grad():
    masked = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).last_hidden_state
    unmasked = reference(input_ids=torch.from_numpy(ids).long()).last_hidden_state
  _assert_close(ours(ids, mask), masked, f"{name} {save_kwargs} masked")
  _assert_close(ours(ids), unmasked, f"{name} {save_kwargs} unmasked")
  _assert_close(nnx.jit(lambda m, x, k: m(x, k))(ours, jnp.asarray(ids), jnp.asarray(mask)), masked,
                f"{name} {save_kwargs} masked, jitted")
  # The mask matters (padding keys are ignored): the two references differ on the padded rows.
  assert not np.allclose(masked[2].numpy(), unmasked[2].numpy(), atol=1e-3)


def test_checkpoint_round_trip_and_bf16_compute(tmp_path):
  reference = _reference("gated")
  ours, config, _ = _convert(_save(reference, tmp_path / "text_encoder"))
  checkpoints.save(tmp_path / "ckpt", ours, kind="t5_encoder", config=config)
  loaded = checkpoints.load(tmp_path / "ckpt")
  assert isinstance(loaded, t5.T5Encoder) and loaded.config == t5.T5Config.from_dict(config)
  ids, mask = _inputs(CONFIGS["gated"]["vocab_size"], seed=1)
  with torch.no_grad():
    expected = reference(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask))
  _assert_close(loaded(ids, mask), expected.last_hidden_state, "loaded checkpoint")
  # bfloat16 compute (params float32): same function, bf16 rounding.
  low = checkpoints.instantiate(t5.build, {**config, "dtype": "bfloat16"}, nnx.state(ours, nnx.Param))
  out = low(ids, mask)
  assert out.dtype == jnp.float32
  _assert_close(out, expected.last_hidden_state, "bf16 compute", tolerance=5e-2)


def test_tied_embedding_duplicate_is_dropped(tmp_path):
  reference = _reference("gated")
  folder = _save(reference, tmp_path / "text_encoder")
  # Older transformers versions stored the tied copy as well.
  tensors = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
  assert "encoder.embed_tokens.weight" in tensors and "shared.weight" in tensors
  safetensors.torch.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
  ours, _, report = _convert(folder)
  assert report.ignored == ("encoder.embed_tokens.weight",)
  np.testing.assert_array_equal(np.asarray(ours.shared.embedding[...]), reference.shared.weight.detach().numpy())
  # Decoder weights (a full T5 model) are refused, by name.
  safetensors.torch.save_file({**tensors, "decoder.final_layer_norm.weight": torch.ones(32)},
                              folder / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ConversionError, match="decoder.final_layer_norm.weight"):
    _convert(folder)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40), (64, 256), (8, 20), (32, 129)])
def test_relative_position_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
  positions = np.arange(-700, 701)
  relative = positions[None, :] - positions[::7, None]
  expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
    torch.from_numpy(relative), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
  ours = t5.relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(ours, expected.numpy())
  assert ours.min() >= 0 and ours.max() == num_buckets - 1


def test_config_from_published_json_fields():
  published = {  # CogVideoX's text_encoder/config.json (google/t5-v1_1-xxl)
    "_name_or_path": "google/t5-v1_1-xxl", "architectures": ["T5EncoderModel"], "classifier_dropout": 0.0,
    "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
    "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
    "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "output_past": True, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.44.0", "use_cache": True, "vocab_size": 32128}
  config = t5.T5Config.from_transformers(published)
  assert config == t5.COGVIDEOX_T5 and config.dtype == "float32" and config.activation == "gelu_new"
  assert t5.T5Config.from_dict(config.to_dict()) == config
  assert t5_convert.config_from_source(published) == config.to_dict()
  assert t5.T5Config.from_transformers(published, dtype="bfloat16").compute_dtype == jnp.bfloat16
  abstract = checkpoints.abstract_model(t5.build, config.to_dict())
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  with torch.device("meta"):
    reference = transformers.T5EncoderModel(
      transformers.T5Config(**{k: v for k, v in published.items() if not k.startswith("_")}))
  assert num_params == sum(p.numel() for p in reference.parameters()) == 4_762_310_656
  # transformers' derivation of the activation: "gated-gelu" -> gelu_new unless dense_act_fn says otherwise.
  assert t5.T5Config.from_transformers({"feed_forward_proj": "gated-gelu"}).activation == "gelu_new"
  assert t5.T5Config.from_transformers({"feed_forward_proj": "gated-silu"}).activation == "silu"
  assert t5.T5Config.from_transformers({"feed_forward_proj": "relu"}).is_gated is False
  with pytest.raises(WonderlandError, match="feed_forward_proj"):
    t5.T5Config.from_transformers({"feed_forward_proj": "gated-gelu-x"})
  with pytest.raises(WonderlandError, match="not supported"):
    t5.T5Config.from_transformers({"feed_forward_proj": "gated-mish"})
  with pytest.raises(WonderlandError, match="is_decoder"):
    t5.T5Config.from_transformers({**published, "is_decoder": True})
  with pytest.raises(WonderlandError, match="unknown field"):
    t5.T5Config.from_dict({**config.to_dict(), "mystery": 1})


# ------------------------------------------------------------------------------------------------ tokenizer

CORPUS = """A red fox jumps over the lazy dog near the river bank.
The camera slowly pans across a quiet mountain village at dawn.
Waves crash on the rocky shore while seagulls circle overhead.
A wooden cabin stands in a snowy forest under a clear blue sky.
Children play football in a sunny park full of tall green trees.
An old lighthouse glows on the cliff during a stormy night.
City streets at night are filled with neon lights and rain reflections.
"""
PROMPTS = [
    "A red fox near the village.",
    "The camera pans across a snowy mountain forest at night, waves crash on the rocky shore and "
    "seagulls circle overhead while children play football in the park.",  # longer than the small max_length
    "",
    "  leading,   repeated\tand\ntrailing whitespace  ",
    "Unknown characters: Ünïcödé ｆｕｌｌ width １２３ 🦊 and more",
    "specials: </s> <pad>x<unk> <extra_id_0> <extra_id_99><extra_id_100> <extra_id_7 >",
]


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
  """(folder saved by transformers' save_pretrained plus spiece.model, folder laid out like a CogVideoX
  pipeline's tokenizer/: spiece.model and tokenizer_config.json), the sentencepiece model's path."""
  return make_t5_tokenizer(tmp_path_factory.mktemp("tokenizer"), CORPUS * 3, vocab_size=100)


def _transformers_tokenize(tokenizer, prompts, max_length):
  encoded = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                      add_special_tokens=True, return_tensors="np")
  return encoded.input_ids, encoded.attention_mask


@pytest.mark.parametrize("max_length", [16, 226])
def test_tokenizer_matches_transformers(tokenizer_folders, max_length):
  saved, pipeline_like, _ = tokenizer_folders
  ours = T5Tokenizer.from_folder(saved)
  assert len(ours) == 200 and (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
  references = {"vocab": transformers.T5Tokenizer.from_pretrained(saved),
                "spiece.model": transformers.T5Tokenizer.from_pretrained(pipeline_like)}
  for kind, reference in references.items():
    first = reference(PROMPTS[0]).input_ids
    # Not degenerate: real pieces, not unknowns (transformers 5 ignores an unusable vocabulary silently).
    assert len(first) > 5 and len(set(first)) > 5 and first.count(ours.unk_id) == 0, (kind, first)
    assert len(reference) == len(ours), kind
    expected_ids, expected_mask = _transformers_tokenize(reference, PROMPTS, max_length)
    ids, mask = ours(PROMPTS, max_length=max_length)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (len(PROMPTS), max_length)
    for row, prompt in enumerate(PROMPTS):
      np.testing.assert_array_equal(ids[row], expected_ids[row], err_msg=f"{kind} {max_length}: {prompt!r}")
      np.testing.assert_array_equal(mask[row], expected_mask[row], err_msg=f"{kind} {max_length}: {prompt!r}")
  ids, mask = ours(PROMPTS, max_length=max_length)
  if max_length == 16:  # truncated: EOS kept at the end, no padding
    assert ids[1, -1] == ours.eos_id and mask[1].all()
  assert ids[2, 0] == ours.eos_id and mask[2].sum() == 1  # the empty prompt is EOS alone
  assert T5Tokenizer.from_folder(pipeline_like)(PROMPTS, max_length)[0].tolist() == ids.tolist()


def test_tokenizer_errors(tmp_path, tokenizer_folders):
  saved, _, model_file = tokenizer_folders
  with pytest.raises(InputFileError, match="not found"):
    T5Tokenizer.from_folder(tmp_path / "missing")
  no_model = tmp_path / "no_model"
  shutil.copytree(saved, no_model)
  (no_model / "spiece.model").unlink()
  with pytest.raises(InputFileError, match="spiece.model.*tokenizer.json only"):
    T5Tokenizer.from_folder(no_model)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "spiece.model").write_bytes(b"not a model")
  with pytest.raises(InputFileError, match="cannot load"):
    T5Tokenizer.from_folder(broken)
  bad_config = tmp_path / "bad_config"
  bad_config.mkdir()
  shutil.copy(model_file, bad_config / "spiece.model")
  (bad_config / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
  with pytest.raises(InputFileError, match="eos_token '<eos>'"):
    T5Tokenizer.from_folder(bad_config)
  with pytest.raises(WonderlandError, match="max_length"):
    T5Tokenizer.from_folder(saved)("a", max_length=0)
  with pytest.raises(WonderlandError, match="must be a string"):
    T5Tokenizer.from_folder(saved)(["a", None])


def test_encode_prompt_matches_pipeline(tmp_path, tokenizer_folders):
  _, pipeline_like, _ = tokenizer_folders
  reference = _reference("gated")
  text_encoder, _, _ = _convert(_save(reference, tmp_path / "text_encoder"))
  ours_tokenizer = T5Tokenizer.from_folder(pipeline_like)
  reference_tokenizer = transformers.T5Tokenizer.from_pretrained(pipeline_like)
  prompts = [PROMPTS[0], PROMPTS[1], ""]
  for max_length, copies in ((226, 1), (16, 2)):
    # diffusers' CogVideoX _get_t5_prompt_embeds: ids without the attention mask, then repeat per video.
    input_ids, _ = _transformers_tokenize(reference_tokenizer, prompts, max_length)
    with torch.no_grad():
      expected = reference(torch.from_numpy(input_ids).long())[0]
    batch, length, _ = expected.shape
    expected = expected.repeat(1, copies, 1).view(batch * copies, length, -1)
    embeds = t5.encode_prompt(ours_tokenizer, text_encoder, prompts, max_length=max_length,
                              num_videos_per_prompt=copies)
    assert embeds.shape == (len(prompts) * copies, max_length, CONFIGS["gated"]["d_model"])
    _assert_close(embeds, expected, f"encode_prompt max_length={max_length} x{copies}")
  assert t5.encode_prompt(ours_tokenizer, text_encoder, "a fox", dtype=jnp.bfloat16).dtype == jnp.bfloat16
  small = t5.T5Encoder(t5.T5Config(**{**CONFIGS["relu"], "vocab_size": 150}), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match="vocab_size"):
    t5.encode_prompt(ours_tokenizer, small, ["a"])
  with pytest.raises(WonderlandError, match="token ids"):
    small(np.array([[3, 150]]))
  with pytest.raises(WonderlandError, match="attention_mask shape"):
    small(np.array([[3, 4]]), np.ones((1, 3)))
