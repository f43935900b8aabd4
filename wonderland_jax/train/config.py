"""Configs: `configs/<name>.py` files with `get_config() -> ml_collections.ConfigDict`, overridden from the
command line as `--config.train.steps=100` (ml_collections' config_flags, parsed with absl).

    config = load_config("configs/lalrm_tiny.py", ["--config.train.steps=100"])
"""

from __future__ import annotations

import ast
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from wonderland_jax.errors import WonderlandError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(name_or_path: str) -> Path:
  """A config file path, or the bare name of one in the repository's configs/ ("lalrm_tiny")."""
  path = Path(name_or_path)
  if path.is_file():
    return path
  candidate = REPO_CONFIGS / f"{name_or_path.removesuffix('.py')}.py"
  if not path.suffix and candidate.is_file():
    return candidate
  known = sorted(p.stem for p in REPO_CONFIGS.glob("*.py")) if REPO_CONFIGS.is_dir() else []
  raise WonderlandError(f"--config {name_or_path}: no such file" + (f" (known names: {', '.join(known)})" if known
                                                                    else ""))


def _one_line(error: Exception) -> str:
  """The message of an absl / ml_collections error, whose KeyErrors arrive as nested reprs."""
  text = str(error.args[0] if error.args else error)
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  return " ".join(text.split())


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The config of `name_or_path` with `--config.a.b=value` overrides applied (types checked by
  ml_collections; an unknown key or a bad value is an error naming the flag)."""
  path = resolve_config_path(name_or_path)
  for override in overrides:
    if not override.startswith("--config."):
      raise WonderlandError(f"unexpected argument {override!r}: overrides look like --config.train.steps=100")
  flag_values = flags.FlagValues()
  argv = ["wonderland", f"--config={path}", *overrides]
  config_flags.DEFINE_config_file("config", default=None, flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as error:
    raise WonderlandError(f"{path}: {_one_line(error)}") from None
  return flag_values.config
