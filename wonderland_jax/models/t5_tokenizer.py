"""T5's tokenizer (a CogVideoX pipeline's `tokenizer/` folder) with `sentencepiece`, without transformers.

    tokenizer = T5Tokenizer.from_folder("CogVideoX-5b-I2V/tokenizer")     # reads spiece.model
    input_ids, attention_mask = tokenizer(["a red fox", "snow"], max_length=226)   # (2, 226) int32 each

Gives the ids of transformers' `T5Tokenizer(prompts, padding="max_length", max_length=226, truncation=True,
add_special_tokens=True)`, which is how diffusers' CogVideoX pipelines tokenize: the sentencepiece pieces of
the text, the EOS id appended, truncated to `max_length` (the first max_length - 1 pieces, then EOS), and
right-padded with the pad id; the mask is 1 on tokens (EOS included) and 0 on padding.

As in transformers, the special tokens' strings in a prompt ("</s>", "<pad>", "<unk>" and the sentinels
"<extra_id_0>" ... "<extra_id_{extra_ids - 1}>") become their ids, and the text between them is encoded piece
by piece on its own. Sentinel i has id `sentencepiece size + extra_ids - 1 - i` (<extra_id_0> = 32099 for T5).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece

from wonderland_jax.errors import InputFileError, WonderlandError

logger = logging.getLogger(__name__)

MODEL_FILE = "spiece.model"
CONFIG_FILE = "tokenizer_config.json"
DEFAULT_EXTRA_IDS = 100


def _token_string(value, default: str) -> str:
  """A special token as tokenizer_config.json writes it: a string or an AddedToken dict {"content": ...}."""
  if value is None:
    return default
  if isinstance(value, dict):
    value = value.get("content")
  if not isinstance(value, str):
    raise ValueError(f"not a token string: {value!r}")
  return value


class T5Tokenizer:
  """A sentencepiece model plus T5's special tokens; see the module docstring.

  Args:
    processor: the loaded `sentencepiece.SentencePieceProcessor`.
    extra_ids: number of sentinel tokens appended after the pieces (T5: 100).
    eos_token, pad_token, unk_token: the special tokens' strings, which must be pieces of the model.
    source: where the model came from, for error messages.
  """

  def __init__(self, processor: sentencepiece.SentencePieceProcessor, *, extra_ids: int = DEFAULT_EXTRA_IDS,
               eos_token: str = "</s>", pad_token: str = "<pad>", unk_token: str = "<unk>", source: str = ""):
    self._sp = processor
    self.source = source or "sentencepiece model"
    self.num_pieces = processor.get_piece_size()
    if not isinstance(extra_ids, int) or extra_ids < 0:
      raise WonderlandError(f"{self.source}: extra_ids must be a non-negative integer, got {extra_ids!r}")
    self.extra_ids = extra_ids
    self.eos_id, self.pad_id, self.unk_id = (self._piece_id(eos_token, "eos_token"),
                                             self._piece_id(pad_token, "pad_token"),
                                             self._piece_id(unk_token, "unk_token"))
    self.special_tokens: dict[str, int] = {eos_token: self.eos_id, pad_token: self.pad_id, unk_token: self.unk_id}
    for i in range(extra_ids):
      self.special_tokens[f"<extra_id_{i}>"] = self.num_pieces + extra_ids - 1 - i
    alternatives = sorted(self.special_tokens, key=len, reverse=True)
    self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

  def _piece_id(self, token: str, name: str) -> int:
    index = self._sp.piece_to_id(token)
    if self._sp.id_to_piece(index) != token:
      raise InputFileError(f"{self.source}: {name} {token!r} is not a piece of the sentencepiece model")
    return index

  @classmethod
  def from_folder(cls, folder: str | os.PathLike) -> T5Tokenizer:
    """Loads a transformers T5 tokenizer folder: `spiece.model` and, if present, `tokenizer_config.json`
    (its `extra_ids`, `eos_token`, `pad_token`, `unk_token`). Raises `InputFileError` naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
      raise InputFileError(f"{folder}: tokenizer folder not found")
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
      hint = " (it has tokenizer.json only, which is not supported: copy the model's spiece.model in)" if (
        folder / "tokenizer.json").is_file() else ""
      raise InputFileError(f"{model_path}: not found; a T5 tokenizer folder needs its sentencepiece model{hint}")
    config_path = folder / CONFIG_FILE
    config = {}
    if config_path.is_file():
      try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
      except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{config_path}: cannot read: {e}") from None
      if not isinstance(config, dict):
        raise InputFileError(f"{config_path}: expected a JSON object, got a {type(config).__name__}")
    try:
      tokens = {name: _token_string(config.get(name), default) for name, default in
                (("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"))}
    except ValueError as e:
      raise InputFileError(f"{config_path}: {e}") from None
    extra_ids = config.get("extra_ids", DEFAULT_EXTRA_IDS)
    if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or extra_ids < 0:
      raise InputFileError(f"{config_path}: extra_ids must be a non-negative integer, got {extra_ids!r}")
    others = [t for t in (config.get("additional_special_tokens") or [])
              if not re.fullmatch(r"<extra_id_\d+>", _token_string(t, ""))]
    if others:
      logger.warning("%s: additional special tokens %s are not treated as special", config_path, others[:5])
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_path.read_bytes())
    except (OSError, RuntimeError) as e:
      raise InputFileError(f"{model_path}: cannot load the sentencepiece model: {e}") from None
    return cls(processor, extra_ids=extra_ids, source=str(model_path), **tokens)

  def __len__(self) -> int:
    """Vocabulary size: the pieces plus the sentinels (T5: 32100)."""
    return self.num_pieces + self.extra_ids

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, special-token strings included, without EOS, padding or truncation."""
    if not isinstance(text, str):
      raise WonderlandError(f"a prompt must be a string, got {type(text).__name__}")
    ids: list[int] = []
    for i, part in enumerate(self._special_pattern.split(text)):
      if i % 2:
        ids.append(self.special_tokens[part])
      elif part:
        ids.extend(self._sp.encode(part, out_type=int))
    return ids

  def __call__(self, prompts: str | Sequence[str], max_length: int = 226) -> tuple[np.ndarray, np.ndarray]:
    """prompts (a string or B strings) -> (input_ids, attention_mask), each (B, max_length) int32."""
    if isinstance(prompts, str):
      prompts = [prompts]
    if not isinstance(max_length, int) or max_length < 1:
      raise WonderlandError(f"max_length must be a positive integer, got {max_length!r}")
    input_ids = np.full((len(prompts), max_length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_length), np.int32)
    for row, prompt in enumerate(prompts):
      ids = self.encode(prompt)
      if len(ids) + 1 > max_length:
        logger.warning("prompt %d: %d of its %d tokens (with EOS) were truncated to max_length %d", row,
                       len(ids) + 1 - max_length, len(ids) + 1, max_length)
        ids = ids[:max_length - 1]
      ids.append(self.eos_id)
      input_ids[row, :len(ids)] = ids
      mask[row, :len(ids)] = 1
    return input_ids, mask
