"""A toy model in two twins for the conversion tests: a torch.nn module with a diffusers-style key layout and
its Flax NNX port (nnx.List of blocks, 3D and 2D convs, GroupNorm, Linear), plus the rule table between them.

Torch runs channels-first (N, C, T, H, W); the NNX twin channels-last (N, T, H, W, C).
"""

import json

import numpy as np
import torch
from flax import nnx
from safetensors.torch import save_file

from wonderland_jax.convert import Converter, Rule

SOURCE_CONFIG = {"_class_name": "ToyModel", "in_channels": 3, "block_out_channels": 8, "mid_channels": 6,
                 "out_features": 5, "layers": 2, "norm_num_groups": 2}

RULES = [
  Rule(r"(conv_in|down_blocks\.\d+\.conv[12])\.weight", r"\1.kernel", "conv3d"),
  Rule(r"conv_2d\.weight", "conv_2d.kernel", "conv2d"),
  Rule(r"proj_out\.weight", "proj_out.kernel", "linear"),
  Rule(r"(.*norm\w*)\.weight", r"\1.scale"),
  Rule(r"(.*)\.bias", r"\1.bias"),
]


def config_from_source(source: dict) -> dict:
  return {"in_channels": source["in_channels"], "channels": source["block_out_channels"],
          "mid_channels": source["mid_channels"], "out_features": source["out_features"],
          "layers": source["layers"], "groups": source["norm_num_groups"]}


class TorchBlock(torch.nn.Module):
  def __init__(self, channels, groups):
    super().__init__()
    self.norm1 = torch.nn.GroupNorm(groups, channels)
    self.conv1 = torch.nn.Conv3d(channels, channels, 3, padding=1)
    self.norm2 = torch.nn.GroupNorm(groups, channels)
    self.conv2 = torch.nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

  def forward(self, x):
    h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
    return x + self.conv2(torch.nn.functional.silu(self.norm2(h)))


class TorchToy(torch.nn.Module):
  """x (N, C, T, H, W) -> (N, out_features)."""

  def __init__(self, source_config):
    super().__init__()
    c = source_config
    channels, groups = c["block_out_channels"], c["norm_num_groups"]
    self.conv_in = torch.nn.Conv3d(c["in_channels"], channels, 3, padding=1)
    self.down_blocks = torch.nn.ModuleList([TorchBlock(channels, groups) for _ in range(c["layers"])])
    self.norm_out = torch.nn.GroupNorm(groups, channels)
    self.conv_2d = torch.nn.Conv2d(channels, c["mid_channels"], 3, padding=1)
    self.proj_out = torch.nn.Linear(c["mid_channels"], c["out_features"])

  def forward(self, x):
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    h = self.norm_out(h).mean(2)
    h = self.conv_2d(h).mean((2, 3))
    return self.proj_out(h)


class Block(nnx.Module):
  def __init__(self, channels, groups, *, rngs):
    self.norm1 = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.conv1 = nnx.Conv(channels, channels, (3, 3, 3), padding=1, rngs=rngs)
    self.norm2 = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (1, 3, 3), padding=((0, 0), (1, 1), (1, 1)), rngs=rngs)

  def __call__(self, x):
    h = self.conv1(nnx.silu(self.norm1(x)))
    return x + self.conv2(nnx.silu(self.norm2(h)))


class Toy(nnx.Module):
  """x (N, T, H, W, C) -> (N, out_features)."""

  def __init__(self, config, *, rngs):
    channels, groups = config["channels"], config["groups"]
    self.conv_in = nnx.Conv(config["in_channels"], channels, (3, 3, 3), padding=1, rngs=rngs)
    self.down_blocks = nnx.List([Block(channels, groups, rngs=rngs) for _ in range(config["layers"])])
    self.norm_out = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.conv_2d = nnx.Conv(channels, config["mid_channels"], (3, 3), padding=1, rngs=rngs)
    self.proj_out = nnx.Linear(config["mid_channels"], config["out_features"], rngs=rngs)

  def __call__(self, x):
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    h = self.norm_out(h).mean(1)
    h = self.conv_2d(h).mean((1, 2))
    return self.proj_out(h)


def build(config, rngs):
  return Toy(config, rngs=rngs)


def converter(name="toy", kind="toy_test", subfolder="toy"):
  return Converter(name=name, kind=kind, subfolder=subfolder, config_from_source=config_from_source, rules=RULES,
                   build=build)


def torch_model(source_config=None, seed=0):
  """The torch twin with every weight random (GroupNorm scales and biases too)."""
  torch.manual_seed(seed)
  model = TorchToy(source_config or SOURCE_CONFIG).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.3 * torch.randn_like(p))
  return model


def write_model_folder(folder, state_dict, source_config=None, *, shards=None):
  """Writes config.json and the weights: one diffusion_pytorch_model.safetensors, or with `shards` (a list of
  key lists) one file per list plus a diffusers index. Returns the folder."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(source_config or SOURCE_CONFIG))
  tensors = {k: v.contiguous() for k, v in state_dict.items()}
  if shards is None:
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    return folder
  weight_map = {}
  for i, keys in enumerate(shards):
    name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({k: tensors[k] for k in keys}, folder / name, metadata={"format": "pt"})
    weight_map.update({k: name for k in keys})
  index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
           "weight_map": weight_map}
  (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
  return folder


def torch_input(seed=1, n=2, t=3, h=6, w=5, c=3):
  return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, t, h, w)).astype(np.float32))


def torch_output(model, x):
  with torch.no_grad():
    return model(x).numpy()


def nnx_input(x):
  """(N, C, T, H, W) torch -> (N, T, H, W, C) numpy."""
  return np.transpose(x.numpy(), (0, 2, 3, 4, 1))
