"""Full-size jobs compiled deviceless for GPUs and TPUs (`wonderland plan --target ...`): the table of
docs/benchmarks.md's "Full size on accelerators" section, one row per compile with its command.

    python benchmarks/full_size_plans.py --group tpu --out /tmp/plans      # needs the tpu extra (libtpu)
    python benchmarks/full_size_plans.py --group gpu --out /tmp/plans      # needs the gpu extra (CUDA plugin)
    python benchmarks/full_size_plans.py --group tpu --only sample-v5p-1   # one row

Each row runs `wonderland plan ... --json` in its own process (a compile of the 5B model takes minutes on a
2-core host) and appends its Markdown row to <out>/<group>.md as it finishes, so a long run can be stopped and
continued (`--skip-done`). Rows that fail record the error's last line instead of figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024 ** 3

# name -> plan arguments. Inference: image-to-scene compiles encode, sample, decode and reconstruct.
SCENE = ["--job", "image-to-scene"]


def _train(chips: int) -> list[str]:
  return ["--mesh", f"fsdp={chips}", f"--config.train.batch_size={chips}"]


def _camera_dit(target: str, attention: str, chips: int, *, extrapolate: bool = False) -> list[str]:
  return (["--config", "camera_dit_5b"] + (["--extrapolate", "2,4"] if extrapolate else [])
          + ["--target", target, f"--config.base.attention={attention}"] + _train(chips))


def _lalrm(config: str, target: str, attention: str, chips: int) -> list[str]:
  return ["--config", config, "--target", target, f"--config.model.attention={attention}"] + _train(chips)


# Training rows compile the whole step (all 42 + 21 blocks) unless named "-extrapolated" (2 and 4 blocks,
# extended linearly: minutes less, and at 8 H100s 6 GiB (20%) under the whole compile's peak).
ROWS = {
    "gpu": {
        "scene-h100-1": SCENE + ["--target", "h100", "--mesh", "data=1"],
        "scene-h200-1": SCENE + ["--target", "h200", "--mesh", "data=1"],
        "scene-h100-8": SCENE + ["--target", "h100", "--mesh", "context=4,data=2"],
        **{f"camera-dit-{gpu}-{chips}{'-extrapolated' if extrapolated else ''}":
           _camera_dit(gpu, "cudnn", chips, extrapolate=extrapolated)
           for gpu in ("h100", "h200") for chips in (8, 64, 256) for extrapolated in (False, True)},
        "lalrm-lowres-h100-8": _lalrm("lalrm_lowres", "h100", "cudnn", 8),
        "lalrm-highres-h100-8": _lalrm("lalrm_highres", "h100", "cudnn", 8),
        "lalrm-highres-h200-8": _lalrm("lalrm_highres", "h200", "cudnn", 8),
        "lalrm-highres-h100-8-all-views": _lalrm("lalrm_highres", "h100", "cudnn", 8)
        + ["--config.render.views_per_pass=0"],
    },
    "tpu": {
        "scene-v5p-1": SCENE + ["--target", "tpu-v5p:2x2x1", "--mesh", "data=1"],
        "scene-v5p-8": SCENE + ["--target", "tpu-v5p:2x2x2", "--mesh", "context=4,data=2"],
        **{f"camera-dit-v5p-{chips}{'-extrapolated' if extrapolated else ''}":
           _camera_dit(f"tpu-v5p:{topology}", "splash", chips, extrapolate=extrapolated)
           for chips, topology in ((8, "2x2x2"), (64, "4x4x4"), (256, "4x8x8")) for extrapolated in (False, True)},
        "lalrm-lowres-v5p-8": _lalrm("lalrm_lowres", "tpu-v5p:2x2x2", "splash", 8),
        "lalrm-highres-v5p-8": _lalrm("lalrm_highres", "tpu-v5p:2x2x2", "splash", 8),
    },
}
DEFAULT_ROWS = {
    "gpu": ["scene-h100-1", "scene-h200-1", "scene-h100-8", "camera-dit-h100-8", "camera-dit-h200-8",
            "camera-dit-h100-64-extrapolated", "camera-dit-h200-64", "camera-dit-h200-256-extrapolated",
            "lalrm-lowres-h100-8", "lalrm-highres-h100-8", "lalrm-highres-h200-8"],
    "tpu": ["scene-v5p-1", "scene-v5p-8", "camera-dit-v5p-8", "camera-dit-v5p-64",
            "camera-dit-v5p-256-extrapolated", "lalrm-lowres-v5p-8", "lalrm-highres-v5p-8"],
}


def _gib(value: float) -> str:
  return f"{value / GIB:.2f}"


def _row(name: str, command: str, report: dict, seconds: float) -> list[str]:
  rows = []
  plans = [("", report)] if "jobs" not in report else [(job, plan) for job, plan in report["jobs"].items()] + [
      ("", report)]
  for _, plan in plans:
    memory = plan["accelerator_memory_bytes"] if "accelerator_memory_bytes" in plan else None
    share = f" ({plan['peak_bytes'] / memory:.0%})" if memory else ""
    fits = "fits" if plan["fits"] else "does not fit"
    flops = f"{plan['flops']:.3g}" if plan["flops"] else "n/a"
    rows.append(f"| {plan['task']} | {plan['target']}, {_mesh(plan['mesh'])} | {plan['method']} | "
                f"{_gib(plan['argument_bytes'])} | {_gib(plan['temp_bytes'])} | {_gib(plan['peak_bytes'])}{share} "
                f"{fits} ({plan['accelerator']}) | {flops} | {plan['step_seconds']:.2f} s | {seconds:.0f} s | "
                f"`{command}` |")
  return rows


def _mesh(mesh: dict) -> str:
  used = [f"{axis}={size}" for axis, size in mesh.items() if size > 1]
  return ",".join(used) or "1 device"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--group", choices=sorted(ROWS), required=True)
  parser.add_argument("--out", default="plans", help="folder for the JSON plans and <group>.md")
  parser.add_argument("--only", action="append", help="row names, repeatable (default: DEFAULT_ROWS)")
  parser.add_argument("--skip-done", action="store_true", help="skip rows whose JSON exists")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
  args = parser.parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  names = args.only or DEFAULT_ROWS[args.group]
  unknown = sorted(set(names) - set(ROWS[args.group]))
  if unknown:
    parser.error(f"--only: unknown rows {unknown}; the {args.group} rows are {sorted(ROWS[args.group])}")
  table = out / f"{args.group}.md"
  for name in names:
    json_path = out / f"{name}.json"
    if args.skip_done and json_path.exists():
      continue
    plan_args = ROWS[args.group][name]
    command = "wonderland plan " + " ".join(shlex.quote(a) for a in plan_args)
    start = time.perf_counter()
    try:
      result = subprocess.run([sys.executable, "-m", "wonderland_jax.cli", "plan", *plan_args, "--json",
                               str(json_path)], capture_output=True, text=True, timeout=args.timeout)
      if result.returncode < 0:  # e.g. -9: the kernel's OOM killer (a 64-chip whole 5B compile needs > 24 GB)
        failure = f"killed by signal {-result.returncode} (host memory?)"
      else:
        failure = None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]
    except subprocess.TimeoutExpired:
      failure = f"no result in {args.timeout:.0f} s"
    seconds = time.perf_counter() - start
    if failure:
      lines = [f"| {name} | | | | | | | | {seconds:.0f} s | `{command}`: {failure} |"]
    else:
      lines = _row(name, command, json.loads(json_path.read_text()), seconds)
    with table.open("a") as stream:
      stream.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
