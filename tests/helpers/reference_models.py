"""Helpers for parity tests against the PyTorch references (diffusers / transformers)."""

import json
import shutil

import numpy as np
import sentencepiece
import torch
import transformers
from sentencepiece import sentencepiece_model_pb2


def randomize_norms(model: torch.nn.Module, scale: float) -> torch.nn.Module:
  """Perturbs every normalisation parameter (initialised to ones / zeros) so the tests see them."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(scale * torch.randn_like(param))
  return model


def save_reference(model: torch.nn.Module, directory, *, bf16: bool = False, sharded: bool = False,
                   shard_size: str = "30KB"):
  """save_pretrained in fp32 or bf16, as one file or sharded with an index; the model stays fp32."""
  model = model.to(torch.bfloat16) if bf16 else model
  model.save_pretrained(directory, max_shard_size=shard_size if sharded else "10GB")
  model.to(torch.float32)
  return directory


def make_t5_tokenizer(root, corpus: str, vocab_size: int):
  """Trains a tiny unigram sentencepiece model on `corpus` in `root` and lays it out two ways; returns (folder
  saved by transformers' save_pretrained plus spiece.model, folder laid out like a CogVideoX pipeline's
  tokenizer/: spiece.model and tokenizer_config.json, the sentencepiece model's path). Both load with
  `transformers.T5Tokenizer.from_pretrained` and our `T5Tokenizer.from_folder`; the vocabulary is
  `vocab_size` pieces plus 100 sentinels."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "corpus.txt").write_text(corpus)
  sentencepiece.SentencePieceTrainer.train(
    input=str(root / "corpus.txt"), model_prefix=str(root / "tiny"), vocab_size=vocab_size, model_type="unigram",
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  model_file = root / "tiny.model"
  processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
  # T5Tokenizer(vocab_file=...) is ignored by transformers 5; the vocabulary must be given as (piece, score)
  # pairs, with the sentinels after the pieces in reverse order, as transformers lays out a real spiece.model.
  vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
  vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]
  # The model's NFKC normalisation table, which transformers takes from a spiece.model when it converts one.
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_file.read_bytes())
  saved = root / "saved"
  transformers.T5Tokenizer(vocab=vocab, _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap
                           ).save_pretrained(saved)
  shutil.copy(model_file, saved / "spiece.model")  # save_pretrained writes tokenizer.json only
  pipeline_like = root / "pipeline_tokenizer"
  pipeline_like.mkdir()
  shutil.copy(model_file, pipeline_like / "spiece.model")
  (pipeline_like / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
    "extra_ids": 100, "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
    "model_max_length": 226, "legacy": True}))
  return saved, pipeline_like, model_file


def all_equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (jit, remat, scan, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from all_equations(inner)


def assert_close_relative(ours, reference, what: str, rel: float = 1e-4) -> float:
  """Asserts max |ours - reference| <= rel * max |reference| (the parity standard: errors relative to the
  reference's magnitude) and equal shapes; returns the error relative to that magnitude."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, (what, ours.shape, reference.shape)
  scale = max(np.max(np.abs(reference)), 1e-12)
  error = np.max(np.abs(ours - reference))
  assert error <= rel * scale, f"{what}: max error {error:.3g} vs reference magnitude {scale:.3g}"
  return error / scale
