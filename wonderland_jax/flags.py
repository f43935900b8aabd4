"""Argument types of the command line (`cli.py`, `eval/command.py`): each turns one flag's text into a value or
raises `argparse.ArgumentTypeError` with a message naming what was expected, so a mistyped flag is one line and
exit status 2 before any work starts (NaN and infinity are refused wherever a number is read)."""

from __future__ import annotations

import argparse
import math


def size(text: str) -> tuple[int, int]:
  """WIDTHxHEIGHT, both positive."""
  try:
    width, height = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"must look like 512x288 (WIDTHxHEIGHT), got {text!r}") from None
  if width <= 0 or height <= 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
  return width, height


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def finite(text: str) -> float:
  """A finite number (no nan / inf)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return value


def positive(text: str) -> float:
  """A finite number > 0 (frame rates, scales)."""
  value = finite(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
  return value


def fraction(text: str) -> float:
  """A number in (0, 1]."""
  value = finite(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
  return value


def fov(text: str) -> float:
  """A field of view in degrees, strictly between 0 and 180."""
  value = finite(text)
  if not 0 < value < 180:
    raise argparse.ArgumentTypeError(f"expected degrees strictly between 0 and 180, got {text!r}")
  return value


def parameter(text: str) -> tuple[str, float]:
  """KEY=VALUE with a finite VALUE (a trajectory preset's parameter)."""
  key, _, value = text.partition("=")
  try:
    number = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must look like degrees=180, got {text!r}") from None
  if not key.strip() or not math.isfinite(number):
    raise argparse.ArgumentTypeError(f"must look like degrees=180 (a name and a finite number), got {text!r}")
  return key.strip().replace("-", "_"), number


def color(text: str) -> tuple[float, ...]:
  """Comma-separated channel values in [0, 1], e.g. 1,1,1."""
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"must look like 1,1,1, got {text!r}") from None
  if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
    raise argparse.ArgumentTypeError(f"channel values must be in [0, 1], got {text!r}")
  return values
