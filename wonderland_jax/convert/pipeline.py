"""`wonderland convert cogvideox`: a whole diffusers CogVideoX pipeline folder at once.

    out/transformer/, out/vae/, out/text_encoder/   converted checkpoints (`checkpoints.load(out / name)`)
    out/tokenizer/, out/scheduler/                  copied as they are (sentencepiece model, scheduler config)
    out/wonderland_pipeline.json                    the components and each conversion's report

Everything is written into a hidden staging directory next to `out` and renamed at the end, so a failure in
any component leaves nothing at `out`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_directory, write_json
from wonderland_jax.outputs import check_writable

PIPELINE_JSON = "wonderland_pipeline.json"
MODEL_COMPONENTS = ("transformer", "vae", "text_encoder")
COPIED_COMPONENTS = ("tokenizer", "scheduler")
COMPONENTS = MODEL_COMPONENTS + COPIED_COMPONENTS


def convert_pipeline(src: str | os.PathLike, out: str | os.PathLike, *, components=None, overwrite: bool = False,
                     dtype: str = "float32") -> dict:
  """Converts (or copies) `components` (default: all of COMPONENTS) of the pipeline at `src` into `out`."""
  from wonderland_jax.convert import convert  # noqa: PLC0415

  src, out = Path(src), Path(out)
  components = list(components or COMPONENTS)
  unknown = sorted(set(components) - set(COMPONENTS))
  if unknown:
    raise WonderlandError(f"unknown pipeline component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
  missing = [name for name in components if not (src / name).is_dir()]
  if missing:
    raise InputFileError(f"{src}: no {', '.join(name + '/' for name in missing)} folder(s); a diffusers CogVideoX "
                         f"pipeline folder has {', '.join(COMPONENTS)} (pick a subset with --components)")
  if out.exists():
    if not overwrite:
      raise WonderlandError(f"{out}: already exists; pass --overwrite to replace it")
    if any(out.iterdir()) and not (out / PIPELINE_JSON).is_file():
      raise WonderlandError(
          f"{out}: exists and is not a converted pipeline (no {PIPELINE_JSON}); refusing to replace it")
  check_writable(out.parent)
  with atomic_directory(out, manifest=False) as staging:  # wonderland_pipeline.json marks it as ours
    reports = {}
    for name in components:
      if name in MODEL_COMPONENTS:
        reports[name] = convert(name, src, staging / name, dtype=dtype).to_json()
      else:
        shutil.copytree(src / name, staging / name)
    description = {"format": 1, "components": components, "source": str(src.resolve()), "dtype": dtype,
                   "reports": reports}
    write_json(staging / PIPELINE_JSON, description)
  return description


def read_pipeline(directory: str | os.PathLike) -> dict:
  """The description written by `convert_pipeline` (InputFileError if `directory` is not a converted pipeline)."""
  path = Path(directory) / PIPELINE_JSON
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise InputFileError(f"{directory}: not a converted pipeline (no {PIPELINE_JSON}); "
                         "make one with `wonderland convert cogvideox`") from None
