"""CogVideoX's two samplers (diffusers `CogVideoXDDIMScheduler`, `CogVideoXDPMScheduler`) as pure functions.

    config = SchedulerConfig.from_diffusers(json.load(open(".../scheduler/scheduler_config.json")))
    tables = make_tables(config)                         # a pytree of float32 arrays (+ static fields)
    ts = timesteps(config, 50)                           # np.int64 (50,), == diffusers' set_timesteps

    # DDIM (eta = 0, deterministic):
    latents = ddim_step(tables, model_output, t, latents, num_inference_steps=50)
    # DPM (CogVideoX's stochastic DPM-Solver++(2M); the previous step's x0 is explicit state):
    state = init_state(latents)
    latents, state = dpm_update(tables, state, model_output, t, latents, num_inference_steps=50, noise=noise)

Conventions. `timestep` is a discrete training timestep (an int in [0, num_train_timesteps)); under `jax.jit`
it may be a traced int scalar (the tables are indexed with it). `num_inference_steps` is static (keyword-only;
bind it with `functools.partial` or `static_argnames`): like diffusers, the step goes from `t` to
`prev = t - num_train_timesteps // num_inference_steps`, and a negative `prev` means the "final" level
`final_alpha_cumprod` (1.0 when `set_alpha_to_one`). Arrays have any shape; the step is elementwise.

Precision. The schedule (`betas` -> `alphas_cumprod` -> SNR shift -> zero-terminal-SNR rescale) is computed in
numpy with diffusers' dtypes (float64 for `scaled_linear`, float32 for `linear`, `squaredcos_cap_v2` and
`trained_betas`; the cumprod accumulates in float64 as torch's CPU cumprod does). Every per-level quantity
the steps need (sqrt(abar), sqrt(1 - abar), the half log-SNR lambda) is then derived in float64 and rounded
to float32 once. diffusers forms the step's scalar coefficients in float64 (for float64 schedules) and
rounds them once; here they are formed in float32 from the rounded tables: a few ulp apart (~3e-7 relative
over whole 50-step chains). numpy's float32 arithmetic is correctly rounded and torch's vectorised CPU
float32 `linspace` / `sqrt` are not quite, so float32 schedules (`linear`, cosine) differ from diffusers'
by ~1 ulp (which 1 - abar amplifies near abar = 1; `make_tables` accepts diffusers' own table); the
float64 `scaled_linear` schedules CogVideoX ships round to the same float32 `alphas_cumprod`.
Results are float32 (or wider, by `jnp.result_type` of the inputs); diffusers keeps a bf16 sample's dtype
in parts of its arithmetic, so bf16 samples agree only to bf16 precision.

Zero-terminal-SNR schedules (CogVideoX: `rescale_betas_zero_snr=True`) have abar = 0 at the last training
step: lambda is -inf there and the DPM coefficients take their limits through inf arithmetic exactly as in
diffusers (x0 from v-prediction stays finite; an epsilon model divides by zero there, as in diffusers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.errors import WonderlandError

SchedulerKind = Literal["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"]
KINDS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """The fields of a CogVideoX scheduler's diffusers config.json (defaults: diffusers' constructor defaults),
  plus `kind`, the diffusers class (`_class_name`). Both classes share every field. `clip_sample`,
  `clip_sample_range` and `sample_max_value` are stored (they are in the published configs) but, as in
  diffusers, neither CogVideoX step reads them."""

  kind: SchedulerKind = "CogVideoXDDIMScheduler"
  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.0120
  beta_schedule: str = "scaled_linear"
  trained_betas: tuple[float, ...] | None = None
  clip_sample: bool = True
  set_alpha_to_one: bool = True
  steps_offset: int = 0
  prediction_type: str = "epsilon"
  clip_sample_range: float = 1.0
  sample_max_value: float = 1.0
  timestep_spacing: str = "leading"
  rescale_betas_zero_snr: bool = False
  snr_shift_scale: float = 3.0

  @classmethod
  def from_diffusers(cls, config: dict, **overrides) -> SchedulerConfig:
    """From a diffusers scheduler_config.json dict. `_class_name` sets `kind` (missing: the default DDIM);
    other private `_...` keys are ignored; unknown keys are an error."""
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    if "kind" in values:
      raise WonderlandError("scheduler config: unknown field kind (the class comes from _class_name)")
    if "_class_name" in config:
      values["kind"] = config["_class_name"]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise WonderlandError(f"scheduler config: unknown field(s) {', '.join(unknown)}")
    values.update(overrides)
    if values.get("trained_betas") is not None:
      values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
    config = cls(**values)
    config.validate()
    return config

  def to_dict(self) -> dict:
    """The diffusers config.json dict (`kind` as `_class_name`), accepted back by `from_diffusers`."""
    values = dataclasses.asdict(self)
    out = {"_class_name": values.pop("kind")}
    if values["trained_betas"] is not None:
      values["trained_betas"] = list(values["trained_betas"])
    out.update(values)
    return out

  def validate(self) -> None:
    if self.kind not in KINDS:
      raise WonderlandError(f"scheduler config: _class_name {self.kind!r} is not supported ({', '.join(KINDS)})")
    if self.beta_schedule not in BETA_SCHEDULES and self.trained_betas is None:
      raise WonderlandError(f"scheduler config: beta_schedule {self.beta_schedule!r} is not supported "
                            f"({', '.join(BETA_SCHEDULES)})")
    if self.prediction_type not in PREDICTION_TYPES:
      raise WonderlandError(f"scheduler config: prediction_type {self.prediction_type!r} is not supported "
                            f"({', '.join(PREDICTION_TYPES)})")
    if self.timestep_spacing not in TIMESTEP_SPACINGS:
      raise WonderlandError(f"scheduler config: timestep_spacing {self.timestep_spacing!r} is not supported "
                            f"({', '.join(TIMESTEP_SPACINGS)})")
    if self.num_train_timesteps < 2:
      raise WonderlandError(f"scheduler config: num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
    if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
      raise WonderlandError(f"scheduler config: trained_betas has {len(self.trained_betas)} entries, "
                            f"num_train_timesteps is {self.num_train_timesteps}")
    if self.snr_shift_scale <= 0:
      raise WonderlandError(f"scheduler config: snr_shift_scale must be > 0, got {self.snr_shift_scale}")


# ----------------------------------------------------------------------------------------------- the schedule


def _torch_linspace(start: float, end: float, steps: int, dtype) -> np.ndarray:
  """torch.linspace's (scalar) algorithm: the first half counts up from `start`, the second down from `end`.
  (torch's vectorised kernel can differ in the last ulp.)"""
  start, end = dtype(start), dtype(end)
  step = (end - start) / dtype(steps - 1)
  i = np.arange(steps)
  up = start + step * i.astype(dtype)
  down = end - step * (steps - 1 - i).astype(dtype)
  return np.where(i < steps // 2, up, down).astype(dtype)


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' `betas_for_alpha_bar` (Glide cosine), computed in Python floats, returned float32."""
  def alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
  return np.asarray(betas, np.float32)


def betas(config: SchedulerConfig) -> np.ndarray:
  """(T,) the betas, in diffusers' dtype for the schedule (float64 for scaled_linear, else float32)."""
  T = config.num_train_timesteps
  if config.trained_betas is not None:
    return np.asarray(config.trained_betas, np.float32)
  if config.beta_schedule == "linear":
    return _torch_linspace(config.beta_start, config.beta_end, T, np.float32)
  if config.beta_schedule == "scaled_linear":
    return _torch_linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, T, np.float64) ** 2
  return _cosine_betas(T)


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
  """(T,) abar_t, as diffusers' `scheduler.alphas_cumprod` (same dtype): cumprod(1 - beta), then the SNR shift
  abar / (s + (1 - s) abar) with s = snr_shift_scale, then (if rescale_betas_zero_snr) the zero-terminal-SNR
  rescale of sqrt(abar) (Lin et al. 2023, Algorithm 1), in that order."""
  b = betas(config)
  abar = np.cumprod((1.0 - b).astype(np.float64)).astype(b.dtype)  # torch's CPU cumprod accumulates in float64
  s = config.snr_shift_scale
  abar = abar / (s + (1 - s) * abar)
  if config.rescale_betas_zero_snr:
    root = np.sqrt(abar)
    first, last = root[0].copy(), root[-1].copy()
    root = (root - last) * (first / (first - last))
    abar = root ** 2
  return abar.astype(b.dtype)


def final_alpha_cumprod(config: SchedulerConfig) -> float:
  """The abar a step lands on when its previous timestep is negative."""
  return 1.0 if config.set_alpha_to_one else float(alphas_cumprod(config)[0])


def timesteps(config: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
  """np.int64 (num_inference_steps,), descending: exactly diffusers' `set_timesteps(num_inference_steps)`.

  linspace: round(linspace(0, T - 1, n)) reversed; leading: arange(n) * (T // n) reversed, + steps_offset;
  trailing: round(arange(T, 0, -T / n)) - 1 (steps_offset unused)."""
  T = config.num_train_timesteps
  n = int(num_inference_steps)
  if not 1 <= n <= T:
    raise WonderlandError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {num_inference_steps}")
  if config.timestep_spacing == "linspace":
    return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
  if config.timestep_spacing == "leading":
    ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64)
    return ts + config.steps_offset
  ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64)
  return ts - 1


@flax.struct.dataclass
class SchedulerTables:
  """Per-level float32 tables for the pure step functions. A pytree: pass it to jitted functions.

  alphas_cumprod: (T,) abar_t rounded to float32 (`add_noise` / `get_velocity` cast it to the sample dtype
    first, as diffusers does).
  sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, lambdas: (T + 1,) sqrt(abar), sqrt(1 - abar) and the
    half log-SNR lambda = log(sqrt(abar / (1 - abar))) from float64; entry T is the final level
    (`final_alpha_cumprod`), used when a step's previous timestep is negative. lambda is +-inf where abar is
    1 or 0.
  kind, prediction_type, num_train_timesteps: static (from the config).
  """

  alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  lambdas: jax.Array
  kind: str = flax.struct.field(pytree_node=False, default="CogVideoXDDIMScheduler")
  prediction_type: str = flax.struct.field(pytree_node=False, default="v_prediction")
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)


def make_tables(config: SchedulerConfig, alphas_cumprod_table: np.ndarray | None = None) -> SchedulerTables:
  """The step tables for `config` (see `SchedulerTables`). `alphas_cumprod_table` (T,) replaces the schedule's
  abar (e.g. diffusers' own float32 table, which can differ from ours by an ulp: see the module docstring);
  the final level then is 1.0 or its entry 0, per set_alpha_to_one."""
  if alphas_cumprod_table is None:
    abar = alphas_cumprod(config)
  else:
    abar = np.asarray(alphas_cumprod_table)
    if abar.shape != (config.num_train_timesteps,):
      raise WonderlandError(f"alphas_cumprod_table must have shape ({config.num_train_timesteps},), got {abar.shape}")
  final = 1.0 if config.set_alpha_to_one else float(abar[0])
  levels = np.append(abar.astype(np.float64), np.float64(final))
  with np.errstate(divide="ignore"):
    lambdas = np.log(np.sqrt(levels / (1.0 - levels)))
  as32 = lambda x: jnp.asarray(np.asarray(x, np.float32))
  return SchedulerTables(
      alphas_cumprod=as32(abar), sqrt_alphas_cumprod=as32(np.sqrt(levels)),
      sqrt_one_minus_alphas_cumprod=as32(np.sqrt(1.0 - levels)), lambdas=as32(lambdas),
      kind=config.kind, prediction_type=config.prediction_type, num_train_timesteps=config.num_train_timesteps)


# ----------------------------------------------------------------------------------------------- steps


def _level(tables: SchedulerTables, t) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sqrt(abar), sqrt(1 - abar), lambda) at timestep `t` (int scalar, may be traced); t < 0: the final level."""
  t = jnp.asarray(t, jnp.int32)
  i = jnp.where(t >= 0, jnp.minimum(t, tables.num_train_timesteps - 1), tables.num_train_timesteps)
  return tables.sqrt_alphas_cumprod[i], tables.sqrt_one_minus_alphas_cumprod[i], tables.lambdas[i]


def _prev_timestep(tables: SchedulerTables, timestep, num_inference_steps: int):
  if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
    raise WonderlandError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
  return jnp.asarray(timestep, jnp.int32) - tables.num_train_timesteps // int(num_inference_steps)


def _float(*xs):
  return jnp.result_type(jnp.float32, *xs)


def predict_original_sample(tables: SchedulerTables, model_output, timestep, sample) -> jax.Array:
  """x0 from the model output at `timestep`, by `tables.prediction_type`:
  epsilon: (x - sqrt(1 - abar) eps) / sqrt(abar); v_prediction: sqrt(abar) x - sqrt(1 - abar) v; sample: as is.
  (diffusers' `pred_original_sample`, the second output of both steps.)"""
  dtype = _float(model_output, sample)
  model_output, sample = jnp.asarray(model_output, dtype), jnp.asarray(sample, dtype)
  sqrt_alpha, sqrt_sigma, _ = _level(tables, timestep)
  if tables.prediction_type == "epsilon":
    return (sample - sqrt_sigma * model_output) / sqrt_alpha
  if tables.prediction_type == "v_prediction":
    return sqrt_alpha * sample - sqrt_sigma * model_output
  if tables.prediction_type == "sample":
    return model_output
  raise WonderlandError(f"scheduler config: prediction_type {tables.prediction_type!r} is not supported")


def ddim_step(tables: SchedulerTables, model_output, timestep, sample, *, num_inference_steps: int) -> jax.Array:
  """`CogVideoXDDIMScheduler.step(model_output, timestep, sample)[0]` (eta = 0, as the pipeline uses it):

      x_prev = a x + b x0,  a = sqrt((1 - abar_prev) / (1 - abar_t)),  b = sqrt(abar_prev) - sqrt(abar_t) a

  with prev = timestep - T // num_inference_steps (final level if negative). No clipping (diffusers' CogVideoX
  DDIM ignores clip_sample / thresholding). Shapes: model_output and sample alike; returns that shape."""
  x0 = predict_original_sample(tables, model_output, timestep, sample)
  sample = jnp.asarray(sample, x0.dtype)
  sqrt_alpha, sqrt_sigma, _ = _level(tables, timestep)
  sqrt_alpha_prev, sqrt_sigma_prev, _ = _level(tables, _prev_timestep(tables, timestep, num_inference_steps))
  a = sqrt_sigma_prev / sqrt_sigma
  b = sqrt_alpha_prev - sqrt_alpha * a
  return a * sample + b * x0


def dpm_step(tables: SchedulerTables, model_output, old_pred_original_sample, timestep, timestep_back, sample, *,
             num_inference_steps: int, noise) -> tuple[jax.Array, jax.Array]:
  """`CogVideoXDPMScheduler.step(model_output, old_pred_original_sample, timestep, timestep_back, sample)`:
  returns (prev_sample, pred_original_sample).

  With lambda = log(sqrt(abar / (1 - abar))), h = lambda_prev - lambda_t, x0 = `predict_original_sample`:

      first order:  x_prev = sqrt((1-abar_prev)/(1-abar_t)) e^-h x - expm1(-2h) sqrt(abar_prev) x0 + s noise
      second order: x0 -> D = (1 + 1/(2r)) x0 - 1/(2r) old_x0,  r = (lambda_t - lambda_back) / h
      s = sqrt(1 - abar_prev) sqrt(1 - e^-2h)   (the step is stochastic; `eta` plays no part)

  Second order applies when `old_pred_original_sample` is not None, `timestep_back >= 0` and prev >= 0
  (pass timestep_back = -1, or None, for diffusers' None; `old_pred_original_sample=None` makes the step first
  order statically). Everything but `num_inference_steps` may be traced.

  `noise` (sample's shape) is the standard normal draw the step uses. diffusers draws it with
  `randn_tensor(sample.shape, generator)`; a first-order step draws once and uses it, a second-order step
  draws twice and uses the second draw (the first is discarded). To replay a torch generator stream, feed
  the used draw."""
  x0 = predict_original_sample(tables, model_output, timestep, sample)
  dtype = x0.dtype
  sample = jnp.asarray(sample, dtype)
  noise = jnp.asarray(noise, dtype)
  prev = _prev_timestep(tables, timestep, num_inference_steps)
  _, sqrt_sigma, lam = _level(tables, timestep)
  sqrt_alpha_prev, sqrt_sigma_prev, lam_prev = _level(tables, prev)
  h = lam_prev - lam
  mult_sample = sqrt_sigma_prev / sqrt_sigma * jnp.exp(-h)
  mult_x0 = jnp.expm1(-2 * h) * sqrt_alpha_prev
  mult_noise = sqrt_sigma_prev * jnp.sqrt(1 - jnp.exp(-2 * h))
  stochastic = mult_sample * sample + mult_noise * noise
  first = stochastic - mult_x0 * x0
  if old_pred_original_sample is None or timestep_back is None:
    return first, x0
  back = jnp.asarray(timestep_back, jnp.int32)
  _, _, lam_back = _level(tables, jnp.maximum(back, 0))
  r = (lam - lam_back) / h
  denoised = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * jnp.asarray(old_pred_original_sample, dtype)
  second = stochastic - mult_x0 * denoised
  return jnp.where((back >= 0) & (prev >= 0), second, first), x0


def dpm_step_with_key(tables: SchedulerTables, model_output, old_pred_original_sample, timestep, timestep_back,
                      sample, *, num_inference_steps: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`dpm_step` with its noise drawn as `jax.random.normal(key, sample.shape)` (float32)."""
  noise = jax.random.normal(key, jnp.shape(sample), jnp.float32)
  return dpm_step(tables, model_output, old_pred_original_sample, timestep, timestep_back, sample,
                  num_inference_steps=num_inference_steps, noise=noise)


# ----------------------------------------------------------------------------------------------- loop state


@flax.struct.dataclass
class SchedulerState:
  """What the CogVideoX pipeline carries between steps for the DPM sampler (diffusers keeps no state in the
  scheduler itself: the pipeline passes these back in).

  old_pred_original_sample: the previous step's x0 (zeros before the first step), float32, sample's shape.
  timestep_back: int32 scalar, the previous step's timestep (`timesteps[i - 1]`), -1 before the first step.
  """

  old_pred_original_sample: jax.Array
  timestep_back: jax.Array


def init_state(sample) -> SchedulerState:
  """The state before the first step (diffusers: old_pred_original_sample = None, timestep_back = None)."""
  return SchedulerState(jnp.zeros(jnp.shape(sample), _float(sample)), jnp.asarray(-1, jnp.int32))


def dpm_update(tables: SchedulerTables, state: SchedulerState, model_output, timestep, sample, *,
               num_inference_steps: int, noise) -> tuple[jax.Array, SchedulerState]:
  """One pipeline DPM step on the loop state: (prev_sample, next state). Jittable, scan-friendly."""
  prev_sample, x0 = dpm_step(tables, model_output, state.old_pred_original_sample, timestep, state.timestep_back,
                             sample, num_inference_steps=num_inference_steps, noise=noise)
  return prev_sample, SchedulerState(x0.astype(state.old_pred_original_sample.dtype),
                                     jnp.asarray(timestep, jnp.int32))


def step(tables: SchedulerTables, state: SchedulerState, model_output, timestep, sample, *,
         num_inference_steps: int, noise=None) -> tuple[jax.Array, SchedulerState]:
  """One pipeline step for either scheduler (`tables.kind`): (prev_sample, next state). DDIM ignores `noise`
  (may be None) and only advances the state; DPM requires it (see `dpm_step`)."""
  if tables.kind == "CogVideoXDPMScheduler":
    if noise is None:
      raise WonderlandError("the DPM scheduler needs noise= for every step (draw it with jax.random.normal)")
    return dpm_update(tables, state, model_output, timestep, sample, num_inference_steps=num_inference_steps,
                      noise=noise)
  x0 = predict_original_sample(tables, model_output, timestep, sample)
  prev_sample = ddim_step(tables, model_output, timestep, sample, num_inference_steps=num_inference_steps)
  return prev_sample, SchedulerState(x0.astype(state.old_pred_original_sample.dtype),
                                     jnp.asarray(timestep, jnp.int32))


# ----------------------------------------------------------------------------------------------- training


def _per_sample(values: jax.Array, ndim: int) -> jax.Array:
  """diffusers' `.flatten()` then `unsqueeze(-1)` up to `ndim`: one value per leading-axis entry."""
  values = values.reshape(-1)
  return values.reshape(values.shape + (1,) * max(ndim - 1, 0))


def add_noise(tables: SchedulerTables, original, noise, timesteps) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, diffusers' `add_noise`: abar is cast to the sample dtype
  before the square roots. timesteps: an int scalar or (B,) for a leading batch axis of `original`."""
  original = jnp.asarray(original)
  abar = tables.alphas_cumprod.astype(original.dtype)[jnp.asarray(timesteps, jnp.int32)]
  sqrt_alpha = _per_sample(abar ** 0.5, original.ndim)
  sqrt_sigma = _per_sample((1 - abar) ** 0.5, original.ndim)
  return sqrt_alpha * original + sqrt_sigma * jnp.asarray(noise)


def get_velocity(tables: SchedulerTables, sample, noise, timesteps) -> jax.Array:
  """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (`sample` is the clean x0), diffusers'
  `get_velocity`; broadcasting as `add_noise`."""
  sample = jnp.asarray(sample)
  abar = tables.alphas_cumprod.astype(sample.dtype)[jnp.asarray(timesteps, jnp.int32)]
  sqrt_alpha = _per_sample(abar ** 0.5, sample.ndim)
  sqrt_sigma = _per_sample((1 - abar) ** 0.5, sample.ndim)
  return sqrt_alpha * jnp.asarray(noise) - sqrt_sigma * sample
