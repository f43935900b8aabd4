"""Training metrics: TensorBoard event files (tensorboardX: no TensorFlow needed) and a JSON-lines log.

    writer = MetricWriter(workdir)              # writes only on process 0
    writer.scalars(step, {"loss": 0.1, "psnr": 21.3})
    writer.images(step, {"render_vs_gt": image_hwc})   # float in [0, 1] or uint8, (H, W, 3)
    writer.close()

Scalars go to `workdir/tensorboard/` and, one JSON object per line, to `workdir/metrics.jsonl`
({"step": 100, "loss": 0.1, ...}); images only to TensorBoard. Averages between log steps are kept with
`clu.metrics.Average` (`ScalarAverager`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np
from clu import metrics as clu_metrics


class ScalarAverager:
  """Running means of named scalars between two log steps."""

  def __init__(self):
    self._averages: dict[str, clu_metrics.Average] = {}

  def add(self, values: dict) -> None:
    for name, value in values.items():
      update = clu_metrics.Average.from_model_output(np.asarray(value, np.float32))
      self._averages[name] = self._averages[name].merge(update) if name in self._averages else update

  def compute(self) -> dict[str, float]:
    """The means since the last `compute` (then reset)."""
    out = {name: float(average.compute()) for name, average in self._averages.items()}
    self._averages = {}
    return out


class MetricWriter:
  """See the module docstring. `enabled=False` (default on processes other than 0) makes every call a no-op."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = Path(workdir)
    self._tensorboard = None
    self._jsonl = None
    if self.enabled:
      import tensorboardX  # noqa: PLC0415 (only the writing process needs it)
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._tensorboard = tensorboardX.SummaryWriter(str(self.workdir / "tensorboard"))
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    for name, value in values.items():
      value = float(value)
      self._tensorboard.add_scalar(name, value, int(step))
      record[name] = value if math.isfinite(value) else str(value)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def images(self, step: int, images: dict) -> None:
    if not self.enabled:
      return
    for name, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
      self._tensorboard.add_image(name, image, int(step), dataformats="HWC")
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()
      self._jsonl.close()
      self.enabled = False
