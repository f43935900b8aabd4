"""Helpers for parity tests against the PyTorch references (diffusers / transformers)."""

import torch


def randomize_norms(model: torch.nn.Module, scale: float) -> torch.nn.Module:
  """Perturbs every normalisation parameter (initialised to ones / zeros) so the tests see them."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(scale * torch.randn_like(param))
  return model


def save_reference(model: torch.nn.Module, directory, *, bf16: bool = False, sharded: bool = False,
                   shard_size: str = "30KB"):
  """save_pretrained in fp32 or bf16, as one file or sharded with an index; the model stays fp32."""
  model = model.to(torch.bfloat16) if bf16 else model
  model.save_pretrained(directory, max_shard_size=shard_size if sharded else "10GB")
  model.to(torch.float32)
  return directory
