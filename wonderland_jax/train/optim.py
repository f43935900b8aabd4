"""The optimizer from a config: AdamW with linear warmup + cosine decay and global-norm clipping (optax).

    config.optimizer = dict(learning_rate=4e-4, warmup_steps=1000, b1=0.9, b2=0.95, eps=1e-8,
                            weight_decay=0.05, clip_norm=1.0, final_lr_fraction=0.0, schedule="cosine")
"""

from __future__ import annotations

import optax

from wonderland_jax.errors import WonderlandError

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(optimizer, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to
  `learning_rate * final_lr_fraction` at `total_steps` ("cosine"), or flat after warmup ("constant")."""
  peak = float(optimizer.learning_rate)
  warmup = int(optimizer.warmup_steps)
  schedule = optimizer.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise WonderlandError(f"--config.optimizer.schedule={schedule!r}: use one of {SCHEDULES}")
  if schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                                [max(warmup, 1)])
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
                                            end_value=peak * float(optimizer.get("final_lr_fraction", 0.0)))


def make_optimizer(optimizer, total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm (when `clip_norm` > 0), then AdamW on the schedule above."""
  adamw = optax.adamw(learning_rate_schedule(optimizer, total_steps), b1=float(optimizer.b1),
                      b2=float(optimizer.b2), eps=float(optimizer.eps),
                      weight_decay=float(optimizer.weight_decay))
  clip = float(optimizer.get("clip_norm", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
