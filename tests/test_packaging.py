"""The built wheel: configs inside the package (`--config NAME` works from an install), the declared
dependencies and floors, `wonderland --version`, and every CLI flag with help text."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wonderland_jax.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(out)], check=True, cwd=out)
  (path,) = out.glob("wonderland_jax-*.whl")
  return path


def test_the_wheel_holds_the_configs_and_declares_what_the_code_imports(wheel, tmp_path):
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    archive.extractall(tmp_path / "site")
  configs = sorted(Path(name).stem for name in names if name.startswith("wonderland_jax/configs/"))
  assert configs == sorted(path.stem for path in (REPO / "configs").glob("*.py"))
  assert any(name.startswith("wonderland_jax/demo/weights/") for name in names)
  requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
              if line.startswith("Requires-Dist")]
  for needed in ("jax>=0.7", "flax>=0.12", "pillow", "grain>=0.2.12"):
    assert needed in requires, needed
  assert "License-Expression: Apache-2.0" in metadata
  # From the unpacked wheel (not the checkout): a config by name resolves inside the package, and loads.
  script = ("from wonderland_jax.train.config import load_config, resolve_config_path; "
            "print(resolve_config_path('lalrm_tiny')); "
            "print(load_config('lalrm_highres').data.sources.generated.weight)")
  environment = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, check=True)
  path, weight = result.stdout.split()
  assert Path(path).is_relative_to(tmp_path / "site" / "wonderland_jax" / "configs") and float(weight) == 0.25


def test_version_and_every_flag_has_help(capsys):
  parser = build_parser()
  with pytest.raises(SystemExit) as exit_info:
    parser.parse_args(["--version"])
  assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("wonderland ")
  missing = []

  def walk(parser, prefix):
    for action in parser._actions:
      if isinstance(action, argparse._SubParsersAction):
        for name, sub in action.choices.items():
          walk(sub, prefix + [name])
      elif action.option_strings and not action.help:
        missing.append(" ".join(prefix + action.option_strings[:1]))
  walk(parser, ["wonderland"])
  assert not missing, missing
  commands = build_parser()._subparsers._group_actions[0].choices
  generate = " ".join(commands["generate"].format_help().split())
  assert "sampling steps (default: 50)" in generate and "(1 = off) (default: 6.0)" in generate
  assert "--lalrm" in commands["reconstruct"].format_help()  # one name for the LaLRM flag across commands
