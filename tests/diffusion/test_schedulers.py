"""The CogVideoX DDIM / DPM schedulers against diffusers' (torch float32): tables, timesteps, every step of
whole sampling chains (DPM fed the same generator noise), add_noise / get_velocity, jit and scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from tests.helpers.schedulers import SHIPPED
from wonderland_jax.diffusion import schedulers as S
from wonderland_jax.errors import WonderlandError

# scheduler/scheduler_config.json of THUDM/CogVideoX-5b-I2V (the DPM variant: the same fields, other class).
VARIANTS = {
    "shipped": {},
    "leading": {"timestep_spacing": "leading", "steps_offset": 1},
    "linspace": {"timestep_spacing": "linspace"},
    "snr_shift_3": {"snr_shift_scale": 3.0},
    "epsilon": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "snr_shift_scale": 3.0},
    "linear_no_final_one": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                            "set_alpha_to_one": False, "timestep_spacing": "leading"},
    "cosine_sample": {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"},
    "trained_betas": {"trained_betas": [float(b) for b in np.linspace(2e-4, 0.03, 1000)], "snr_shift_scale": 2.0},
}
KINDS = {"CogVideoXDDIMScheduler": CogVideoXDDIMScheduler, "CogVideoXDPMScheduler": CogVideoXDPMScheduler}


def _configs(kind: str, variant: str):
  json_dict = dict(SHIPPED, _class_name=kind, **VARIANTS[variant])
  reference = KINDS[kind].from_config(json_dict)
  return json_dict, reference, S.SchedulerConfig.from_diffusers(json_dict)


def _close(ours, reference, tol=1e-5):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape
  assert np.isfinite(reference).all()
  err = np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-30)
  assert err <= tol, err


def test_config_round_trip_and_errors():
  config = S.SchedulerConfig.from_diffusers(dict(SHIPPED, _class_name="CogVideoXDPMScheduler"))
  assert config.kind == "CogVideoXDPMScheduler"
  assert config.prediction_type == "v_prediction" and config.snr_shift_scale == 1.0
  assert S.SchedulerConfig.from_diffusers(config.to_dict()) == config
  assert config.to_dict()["_class_name"] == "CogVideoXDPMScheduler"
  with pytest.raises(WonderlandError, match="bogus"):
    S.SchedulerConfig.from_diffusers(dict(SHIPPED, bogus=1))
  with pytest.raises(WonderlandError, match="prediction_type"):
    S.SchedulerConfig.from_diffusers(dict(SHIPPED, prediction_type="flow"))
  with pytest.raises(WonderlandError, match="_class_name"):
    S.SchedulerConfig.from_diffusers(dict(SHIPPED, _class_name="DDIMScheduler"))
  with pytest.raises(WonderlandError, match="num_inference_steps"):
    S.timesteps(config, 1001)
  with pytest.raises(WonderlandError, match="alphas_cumprod_table"):
    S.make_tables(config, np.ones(10))
  trained = S.SchedulerConfig.from_diffusers(dict(SHIPPED, **VARIANTS["trained_betas"]))
  assert S.SchedulerConfig.from_diffusers(trained.to_dict()) == trained


@pytest.mark.parametrize("variant", VARIANTS)
def test_tables_match_diffusers(variant):
  _, reference, config = _configs("CogVideoXDDIMScheduler", variant)
  ours, theirs = S.alphas_cumprod(config), reference.alphas_cumprod.numpy()
  assert ours.dtype == theirs.dtype
  if theirs.dtype == np.float64:  # scaled_linear: the same float32 table
    np.testing.assert_array_equal(ours.astype(np.float32), theirs.astype(np.float32))
  np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-12)
  tables = S.make_tables(config)
  np.testing.assert_allclose(np.asarray(tables.alphas_cumprod), theirs.astype(np.float32), rtol=2e-6, atol=1e-12)
  assert float(tables.sqrt_alphas_cumprod[-1]) ** 2 == pytest.approx(float(reference.final_alpha_cumprod), rel=1e-6)
  assert S.final_alpha_cumprod(config) == pytest.approx(float(reference.final_alpha_cumprod), rel=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_timesteps_match_diffusers(kind, variant):
  _, reference, config = _configs(kind, variant)
  for n in (1, 4, 6, 7, 25, 30, 33, 50, 999, 1000):
    reference.set_timesteps(n)
    ours = S.timesteps(config, n)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, reference.timesteps.numpy(), err_msg=f"{n} steps")


def _chain(kind, variant, n, shape=(2, 3, 4, 5), seed=0):
  """Runs diffusers' scheduler through all n steps (pipeline calling convention) on random model outputs and
  returns (our config, our tables, timesteps, model outputs, used noises, prev_samples,
  pred_original_samples, initial sample).

  Float32 schedules (linear, cosine) get diffusers' own alphas_cumprod table: torch's float32 CPU sqrt /
  linspace are not correctly rounded, and one ulp of abar near 1 moves 1 - abar (so the last steps) by
  ~1e-3 relative; `test_tables_match_diffusers` covers the tables themselves."""
  _, reference, config = _configs(kind, variant)
  reference.set_timesteps(n)
  rng = np.random.default_rng(seed)
  x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
  start = x.numpy().copy()
  generator, replay = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
  outputs, noises, prevs, x0s = [], [], [], []
  old = None
  ts = reference.timesteps
  for i, t in enumerate(ts):
    model_output = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if kind == "CogVideoXDDIMScheduler":
      x, x0 = reference.step(model_output, t, x, return_dict=False)
      noises.append(np.zeros(shape, np.float32))
    else:
      second_order = old is not None and int(t) - config.num_train_timesteps // n >= 0
      draws = [torch.randn(shape, generator=replay) for _ in range(2 if second_order else 1)]
      noises.append(draws[-1].numpy())
      x, old = reference.step(model_output, old, t, ts[i - 1] if i > 0 else None, x, generator=generator,
                              return_dict=False)
      x0 = old
    assert x.dtype == torch.float32
    outputs.append(model_output.numpy())
    prevs.append(x.numpy())
    x0s.append(x0.numpy())
  table = reference.alphas_cumprod.numpy()
  tables = S.make_tables(config, table if table.dtype == np.float32 else None)
  return config, tables, ts.numpy(), outputs, noises, prevs, x0s, start


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant,steps", [("shipped", 50), ("shipped", 6)] +
                         [(v, 7) for v in VARIANTS if v != "shipped"])
def test_steps_match_diffusers(kind, variant, steps):
  """Every step of a whole chain, ours run independently (jitted, traced timesteps) from the same start."""
  _, tables, ts, outputs, noises, prevs, x0s, x = _chain(kind, variant, steps)
  x = jnp.asarray(x)
  ddim = jax.jit(functools.partial(S.ddim_step, num_inference_steps=steps))
  x0_fn = jax.jit(S.predict_original_sample)
  dpm = jax.jit(functools.partial(S.dpm_step, num_inference_steps=steps))
  old = None
  for i, t in enumerate(ts):
    t = jnp.int32(t)
    if kind == "CogVideoXDDIMScheduler":
      x0 = x0_fn(tables, outputs[i], t, x)
      x = ddim(tables, outputs[i], t, x)
    else:
      back = jnp.int32(ts[i - 1] if i > 0 else -1)
      x, x0 = dpm(tables, outputs[i], old, t, back, x, noise=noises[i])
      old = x0
    _close(x0, x0s[i])
    _close(x, prevs[i])


@pytest.mark.parametrize("kind", KINDS)
def test_scan_loop_with_state(kind):
  """`step` over `SchedulerState` in one jitted lax.scan (the sampling loop's shape) matches diffusers."""
  steps = 10
  _, tables, ts, outputs, noises, prevs, _, x = _chain(kind, "shipped", steps, seed=3)

  @jax.jit
  def run(x, ts, outputs, noises):
    def body(carry, inputs):
      x, state = carry
      t, model_output, noise = inputs
      x, state = S.step(tables, state, model_output, t, x, num_inference_steps=steps, noise=noise)
      return (x, state), x
    (_, state), xs = jax.lax.scan(body, (x, S.init_state(x)), (ts, outputs, noises))
    return xs, state

  xs, state = run(jnp.asarray(x), jnp.asarray(ts, jnp.int32), jnp.asarray(np.stack(outputs)),
                  jnp.asarray(np.stack(noises)))
  for i in range(steps):
    _close(xs[i], prevs[i])
  assert int(state.timestep_back) == ts[-1]


def test_dpm_step_with_key():
  config = S.SchedulerConfig.from_diffusers(dict(SHIPPED, _class_name="CogVideoXDPMScheduler"))
  tables = S.make_tables(config)
  rng = np.random.default_rng(0)
  x, out, old = (jnp.asarray(rng.standard_normal((3, 4)), jnp.float32) for _ in range(3))
  key = jax.random.key(7)
  a = S.dpm_step_with_key(tables, out, old, 479, 499, x, num_inference_steps=50, key=key)
  b = S.dpm_step(tables, out, old, 479, 499, x, num_inference_steps=50, noise=jax.random.normal(key, x.shape))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  with pytest.raises(WonderlandError, match="noise"):
    S.step(tables, S.init_state(x), out, 999, x, num_inference_steps=50)


@pytest.mark.parametrize("variant", ["shipped", "epsilon", "linear_no_final_one"])
def test_add_noise_and_velocity_match_diffusers(variant):
  _, reference, config = _configs("CogVideoXDDIMScheduler", variant)
  tables = S.make_tables(config)
  rng = np.random.default_rng(1)
  sample = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
  noise = rng.standard_normal(sample.shape).astype(np.float32)
  t = np.array([0, 17, 500, 999])
  for fn, theirs in ((S.add_noise, reference.add_noise), (S.get_velocity, reference.get_velocity)):
    expected = theirs(torch.from_numpy(sample), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    _close(jax.jit(fn)(tables, sample, noise, jnp.asarray(t, jnp.int32)), expected, tol=1e-6)
    # one timestep for the whole batch: diffusers flattens it to (1,) and broadcasts
    expected = theirs(torch.from_numpy(sample), torch.from_numpy(noise), torch.tensor(250)).numpy()
    _close(fn(tables, sample, noise, 250), expected, tol=1e-6)


def test_v_prediction_target_is_consistent():
  """get_velocity's v fed to the v-prediction x0 formula recovers the clean sample from add_noise's x_t."""
  config = S.SchedulerConfig.from_diffusers(SHIPPED)
  tables = S.make_tables(config)
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(rng.standard_normal((2, 6)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((2, 6)), jnp.float32)
  for t in (0, 300, 999):
    xt = S.add_noise(tables, x0, noise, t)
    v = S.get_velocity(tables, x0, noise, t)
    np.testing.assert_allclose(S.predict_original_sample(tables, v, t, xt), x0, atol=2e-6)
