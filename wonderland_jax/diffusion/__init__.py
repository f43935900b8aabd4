"""Diffusion sampling pieces for CogVideoX: the DDIM / DPM schedulers as pure functions over float32 tables
and a small state pytree (`schedulers.py`), and classifier-free guidance as the I2V pipeline applies it
(`guidance.py`)."""

from wonderland_jax.diffusion.guidance import (
                                               classifier_free_guidance,
                                               dynamic_guidance_scale,
                                               guidance_scales,
                                               guided,
                                               uses_guidance,
)
from wonderland_jax.diffusion.schedulers import (
                                               SchedulerConfig,
                                               SchedulerState,
                                               SchedulerTables,
                                               add_noise,
                                               alphas_cumprod,
                                               betas,
                                               ddim_step,
                                               dpm_step,
                                               dpm_step_with_key,
                                               dpm_update,
                                               final_alpha_cumprod,
                                               get_velocity,
                                               init_state,
                                               make_tables,
                                               predict_original_sample,
                                               step,
                                               timesteps,
)

