"""Per-clip captions for camera-branch training (`text.captions`): a JSON-lines file of scene id -> prompt, each
distinct prompt embedded once by the pipeline's T5, each clip's embeddings fed with its batch.

    {"id": "0a1b2c3d4e5f6a7b", "prompt": "a bright living room with a grey sofa"}
    {"id": "synthetic-0-17", "prompt": "coloured blobs floating in a void"}

    wonderland train camera-dit --config configs/camera_dit_5b.py ... --config.text.captions=/data/re10k/captions.jsonl

The file: one JSON object per line with exactly the keys `id` and `prompt` (strings; "" is a valid prompt),
blank lines skipped. `id` is the scene id the data pipeline gives the scene (`Scene.name`): the RealEstate10K /
ACID pose-file stem, the DL3DV / COLMAP scene folder relative to `data.root`, `synthetic-<seed>-<index>` for
synthetic scenes. A malformed line, an unknown or missing key or a repeated id raises `InputFileError` naming
`file:line`. Scenes without a caption get `text.prompt` (the fixed prompt, the default without captions); a file
naming none of the training scenes is an error (its ids are probably not the scene ids).

The table: the distinct prompts of the file plus `text.prompt`, sorted, and their T5 embeddings (P, L, D) float32
(L = the base's `max_text_seq_length`, D = the encoder's width = the base's `text_embed_dim`), computed with
`models.t5.encode_prompt` in batches of `ENCODE_BATCH` (padded to max length without an attention mask, as the
pipeline does: a prompt's embeddings do not depend on its batch). With `text.embeddings = dir/name.npz` the table
is cached in `dir/name.captions.npy` (read back as a memory map) with its index `dir/name.captions.npz`
(`prompts` (P,) unicode, `key` () unicode; no pickle). `key` is a SHA-256 of the prompts, L, the tokenizer files
and the text encoder's description and file sizes: a changed captions file, tokenizer or encoder recomputes the
table (overwriting the cache), an unchanged one reads it. (Retrained encoder weights of the very same file sizes
are not noticed: delete the cache.) Without `text.embeddings` the table is computed every run and held in memory,
refused above `MAX_IN_MEMORY_BYTES`.

The batches: `CaptionedIterator` adds `text_embeds` (B, L, D) float32, row `rows[scene_index]` of the table for
each clip; the step replaces it by the empty prompt's embeddings with probability `text.dropout`
(`train.camera_dit.diffusion_inputs`), as it does the fixed prompt's. The device never holds the table, only each
batch's rows.

Sizes: a row is L x D x 4 bytes, 3.7 MB for CogVideoX-5B (226 x 4096). 20K distinct prompts make a 74 GB cache
file, of which each step reads B rows through the memory map (89 MB at batch 24; host memory holds the pages in
use, not the table), and on a cache miss T5-XXL runs once per prompt; every process computes the same table and
writes it atomically. The scene ids come from a second scan of the dataset (`data.pipeline.make_clip_source`: a
directory listing, or a full parse with `data.check_scenes`), so that the scene indices in the clips map to ids.
One data source only: the clips of a mixture (`data.sources`) do not say which source they come from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from wonderland_jax import checkpoints
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_path
from wonderland_jax.models.dit import DiTConfig

logger = logging.getLogger("wonderland_jax")

CAPTION_KEYS = ("id", "prompt")
ENCODE_BATCH = 16  # prompts per T5 call when building a table
MAX_IN_MEMORY_BYTES = 4 << 30  # largest table computed without a cache file (`text.embeddings`)


def read_captions(path: str | Path) -> dict[str, str]:
  """The captions file `path` (JSON lines, module docstring) -> {scene id: prompt}; InputFileError naming
  `path:line` for a bad line, an unknown or missing key, a non-string value or a repeated id."""
  path = Path(path)
  try:
    text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is not part of the first line
  except FileNotFoundError:
    raise InputFileError(f"{path}: captions file not found") from None
  except (OSError, UnicodeDecodeError) as err:
    raise InputFileError(f"{path}: cannot read the captions file: {err}") from None
  captions: dict[str, str] = {}
  first_line: dict[str, int] = {}
  for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028 and kin
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as err:
      raise InputFileError(f"{where}: not a JSON object ({err.msg} at column {err.colno})") from None
    if not isinstance(entry, dict):
      raise InputFileError(f'{where}: expected an object {{"id": ..., "prompt": ...}}, got {type(entry).__name__}')
    unknown = sorted(set(entry) - set(CAPTION_KEYS))
    if unknown:
      raise InputFileError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a caption has 'id' and "
                           "'prompt' only")
    for key in CAPTION_KEYS:
      if key not in entry:
        raise InputFileError(f"{where}: missing key {key!r}")
      if not isinstance(entry[key], str):
        raise InputFileError(f"{where}: {key!r} must be a string, got {type(entry[key]).__name__}")
    scene_id = entry["id"]
    if not scene_id:
      raise InputFileError(f"{where}: empty 'id'")
    if scene_id in first_line:
      raise InputFileError(f"{where}: duplicate id {scene_id!r} (first on line {first_line[scene_id]})")
    first_line[scene_id] = number
    captions[scene_id] = entry["prompt"]
  if not captions:
    raise InputFileError(f'{path}: no captions (expected one JSON object {{"id": ..., "prompt": ...}} per line)')
  return captions


@dataclasses.dataclass(frozen=True)
class CaptionTable:
  """Distinct prompts and their text embeddings.

  prompts: (P,) the prompts, sorted; row r of `embeds` is prompts[r]'s.
  embeds: (P, L, D) float32 T5 embeddings (a read-only memory map when read from the cache file).
  """

  prompts: tuple[str, ...]
  embeds: np.ndarray

  def rows(self, prompts: Iterable[str]) -> np.ndarray:
    """(n,) int32: the rows of `prompts` (each must be in the table)."""
    row = {prompt: index for index, prompt in enumerate(self.prompts)}
    return np.asarray([row[prompt] for prompt in prompts], np.int32).reshape(-1)


def cache_paths(embeddings: str | Path) -> tuple[Path, Path]:
  """(table .npy, index .npz) of the caption table cached beside the fixed-prompt cache `embeddings`."""
  embeddings = Path(embeddings)
  return embeddings.with_suffix(".captions.npy"), embeddings.with_suffix(".captions.npz")


def table_key(prompts: Sequence[str], tokenizer_dir: Path, encoder_dir: Path, max_length: int) -> str:
  """The SHA-256 (hex) naming a table: the prompts, the max length, the tokenizer's files (their bytes) and the
  text encoder's description and file sizes (module docstring)."""
  digest = hashlib.sha256(json.dumps({"prompts": list(prompts), "max_length": int(max_length)}).encode())
  for path in _files(tokenizer_dir):
    digest.update(f"tokenizer/{path.relative_to(tokenizer_dir)}".encode())
    digest.update(path.read_bytes())
  for path in _files(encoder_dir):
    digest.update(f"text_encoder/{path.relative_to(encoder_dir)}:{path.stat().st_size}".encode())
    if path.name == checkpoints.MODEL_JSON:
      digest.update(path.read_bytes())
  return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
  return sorted(path for path in directory.rglob("*") if path.is_file()) if directory.is_dir() else []


def caption_table(prompts: Iterable[str], pipeline: str | Path, *, max_length: int, text_embed_dim: int,
                  cache: str | Path | None = None) -> CaptionTable:
  """The table of the distinct `prompts` embedded by `pipeline`'s T5 (`text_encoder/`, `tokenizer/`) at
  `max_length` tokens: read from the cache beside `cache` (`cache_paths`) when its key matches, else computed (and
  written there when `cache` is set). `text_embed_dim`: the width the base transformer takes (checked)."""
  prompts = tuple(sorted(set(prompts)))
  pipeline = Path(pipeline)
  tokenizer_dir, encoder_dir = pipeline / "tokenizer", pipeline / "text_encoder"
  key = table_key(prompts, tokenizer_dir, encoder_dir, max_length)
  rows_path, index_path = cache_paths(cache) if cache is not None else (None, None)
  if rows_path is not None:
    embeds = _read_cache(rows_path, index_path, key, prompts, max_length, text_embed_dim)
    if embeds is not None:
      logger.info("camera-dit: read the embeddings of %d caption prompts from %s", len(prompts), rows_path)
      return CaptionTable(prompts, embeds)
  from wonderland_jax.models.t5_tokenizer import T5Tokenizer  # noqa: PLC0415 (sentencepiece, only on a miss)
  tokenizer = T5Tokenizer.from_folder(tokenizer_dir)
  encoder = checkpoints.load(encoder_dir)
  width = int(encoder.config.d_model)
  if width != text_embed_dim:
    raise InputFileError(f"{encoder_dir}: the text encoder's width is {width}; the base transformer takes text "
                         f"embeddings of {text_embed_dim}")
  shape = (len(prompts), int(max_length), width)
  size = int(np.prod(shape)) * 4
  if rows_path is None:
    if size > MAX_IN_MEMORY_BYTES:
      raise WonderlandError(f"--config.text.captions: the embeddings of {len(prompts)} prompts {shape} take "
                            f"{size / 2**30:.1f} GiB, more than the {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB held in "
                            "memory; set --config.text.embeddings to cache them in a file that is memory-mapped")
    embeds = np.empty(shape, np.float32)
    _encode_into(embeds, prompts, tokenizer, encoder, max_length)
    return CaptionTable(prompts, embeds)
  logger.info("camera-dit: embedding %d caption prompts %s (%.2f GiB) into %s", len(prompts), shape, size / 2**30,
              rows_path)
  index_path.unlink(missing_ok=True)  # no index names a half-written table
  with atomic_path(rows_path) as temporary:
    out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
    _encode_into(out, prompts, tokenizer, encoder, max_length)
    out.flush()
    del out
  with atomic_path(index_path) as temporary:
    with open(temporary, "wb") as handle:
      np.savez(handle, prompts=np.asarray(prompts, dtype=str), key=np.asarray(key))
  return CaptionTable(prompts, np.load(rows_path, mmap_mode="r"))


def _encode_into(out: np.ndarray, prompts: Sequence[str], tokenizer, encoder, max_length: int) -> None:
  """Fills out (P, L, D) with the prompts' embeddings, `ENCODE_BATCH` at a time (the last batch padded with
  repeats, so one shape compiles)."""
  from wonderland_jax.models.t5 import encode_prompt  # noqa: PLC0415 (the encoder only on a cache miss)
  batch = min(ENCODE_BATCH, len(prompts))
  for start in range(0, len(prompts), batch):
    chunk = list(prompts[start:start + batch])
    count = len(chunk)
    chunk += chunk[-1:] * (batch - count)
    out[start:start + count] = np.asarray(encode_prompt(tokenizer, encoder, chunk, max_length))[:count]


def _read_cache(rows_path: Path, index_path: Path, key: str, prompts: tuple[str, ...], max_length: int,
                width: int) -> np.ndarray | None:
  """The cached table (a memory map) if its index has `key` and it matches; else None (recompute)."""
  if not (rows_path.is_file() and index_path.is_file()):
    return None
  try:
    with np.load(index_path) as index:
      stored_key, stored_prompts = str(index["key"]), tuple(index["prompts"].tolist())
    embeds = np.load(rows_path, mmap_mode="r")
  except (OSError, KeyError, ValueError) as err:
    logger.warning("camera-dit: unreadable caption cache %s (%s): recomputing it", index_path, err)
    return None
  if stored_key != key:
    logger.info("camera-dit: the captions, tokenizer or text encoder changed since %s was written: recomputing it",
                rows_path)
    return None
  if stored_prompts != prompts or embeds.shape != (len(prompts), max_length, width) or embeds.dtype != np.float32:
    logger.warning("camera-dit: %s %s does not match its index %s: recomputing it", rows_path, embeds.shape,
                   index_path)
    return None
  return embeds


def scene_names(source) -> list[str]:
  """The scene id of every scene index of a clip source (`data.pipeline.make_clip_source`)."""
  if hasattr(source, "scene_name"):  # SyntheticDataset: names without rendering
    return [source.scene_name(index) for index in range(len(source))]
  scenes = getattr(source, "scenes", None)
  if scenes is None:
    raise WonderlandError(f"--config.text.captions: the clips of a {type(source).__name__} carry no scene ids "
                          "(captions work with data.source 'synthetic' and 'scenes')")
  return [scene.name for scene in scenes]


def caption_rows(names: Sequence[str], captions: Mapping[str, str], table: CaptionTable,
                 default: str) -> tuple[np.ndarray, int]:
  """((S,) int32 the table row of each scene of `names`: its caption's, else `default`'s; the number captioned)."""
  prompts = [captions.get(name, default) for name in names]
  return table.rows(prompts), sum(name in captions for name in names)


class CaptionedIterator:
  """The batches of `iterator` with `text_embeds` (B, L, D) float32 added: row rows[scene_index] of `embeds`
  (P, L, D) for each clip. `get_state` / `set_state` are the wrapped iterator's (resume is unchanged)."""

  def __init__(self, iterator, embeds: np.ndarray, rows: np.ndarray):
    self.iterator, self.embeds, self.rows = iterator, embeds, np.asarray(rows)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.iterator))
    batch["text_embeds"] = self.lookup(batch["scene_index"])
    return batch

  def lookup(self, scene_index) -> np.ndarray:
    """(B,) scene indices -> (B, L, D) float32 their captions' embeddings."""
    return np.asarray(self.embeds[self.rows[np.asarray(scene_index)]], np.float32)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state) -> None:
    self.iterator.set_state(state)


class ClipCaptions:
  """The captions of a camera-DiT training config (`text.captions`, `text.prompt`, `text.embeddings`,
  `base.pipeline`): file and table loaded on first use, shared by the training iterator and the evaluation."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.path = Path(config.text.captions)
    self.default = str(config.text.prompt)
    self.embeddings = str(config.text.get("embeddings") or "") or None
    self.pipeline = str(config.base.get("pipeline") or "") or None
    self._captions: dict[str, str] | None = None
    self._table: CaptionTable | None = None

  def table(self) -> CaptionTable:
    """The caption table (computed or read once per process)."""
    if self._table is None:
      if self.pipeline is None:
        raise WonderlandError("--config.text.captions needs a text encoder: set --config.base.pipeline (a converted "
                              "CogVideoX pipeline with text_encoder/ and tokenizer/)")
      self._captions = read_captions(self.path)
      _, base, _ = checkpoints.read_description(Path(self.pipeline) / "transformer")
      base = DiTConfig.from_diffusers(base)
      self._table = caption_table([*self._captions.values(), self.default], self.pipeline,
                                  max_length=base.max_text_seq_length, text_embed_dim=base.text_embed_dim,
                                  cache=self.embeddings)
    return self._table

  def rows(self, source, *, where: str) -> np.ndarray:
    """(S,) int32 the table row of each scene of a clip `source`; `where` names the scenes in the log
    ('training', 'held-out'). A file captioning none of the training scenes is an error."""
    table = self.table()
    names = scene_names(source)
    rows, captioned = caption_rows(names, self._captions, table, self.default)
    logger.info("camera-dit: %d of the %d %s scenes have a caption in %s (the others: text.prompt); %d distinct "
                "prompts", captioned, len(names), where, self.path, len(table.prompts))
    if captioned == 0 and where == "training":
      raise InputFileError(f"{self.path}: none of its {len(self._captions)} ids is a training scene id (the scene "
                           f"names: e.g. {names[0]!r}; its ids: e.g. {next(iter(self._captions))!r})")
    return rows

  def train_iterator(self, config: ml_collections.ConfigDict) -> CaptionedIterator:
    """`data.pipeline.make_train_iterator(config)` with `text_embeds` in every batch."""
    from wonderland_jax.data import pipeline  # noqa: PLC0415 (grain, as in train.camera_dit)
    rows = self.rows(pipeline.make_clip_source(_one_source(config)), where="training")
    return CaptionedIterator(pipeline.make_train_iterator(config), self.table().embeds, rows)

  def held_out_embeds(self, config: ml_collections.ConfigDict, scene_index: np.ndarray) -> np.ndarray:
    """(B,) scene indices of held-out clips (`data.pipeline.eval_clips`) -> (B, L, D) their captions' embeddings."""
    from wonderland_jax.data import pipeline  # noqa: PLC0415
    rows = self.rows(pipeline.make_clip_source(_one_source(config), held_out=True), where="held-out")
    return np.asarray(self.table().embeds[rows[np.asarray(scene_index)]], np.float32)


def _one_source(config: ml_collections.ConfigDict) -> dict:
  """The data config of the one source of `config` (a mixture's clips do not say which source they are from)."""
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  sources = pipeline.source_configs(config)
  if len(sources) > 1:
    raise WonderlandError(f"--config.text.captions works with one data source; data.sources mixes {len(sources)} "
                          f"({', '.join(name for name, _, _ in sources)}), whose clips do not say which source "
                          "they come from")
  return sources[0][2]
