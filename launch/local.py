#!/usr/bin/env python3
"""Runs a `wonderland` command as N processes on this machine, as a multi-host job would (127.0.0.1 coordinator).

    python launch/local.py --processes 2 --devices-per-process 4 -- \
        wonderland train lalrm --config configs/lalrm_tiny.py --workdir runs/two_process \
        --config.parallel.mesh=fsdp=8 --config.train.batch_size=8

Each process gets `--coordinator 127.0.0.1:<free port> --num-processes N --process-id i` appended, and
`--devices-per-process` fake CPU devices (`--xla_force_host_platform_device_count`, JAX_PLATFORMS=cpu), or with
`--gpus` its share of the GPUs (CUDA_VISIBLE_DEVICES). Output lines are prefixed with the process index. When
one process fails the others are stopped; the exit status is the first failure's (0 when all succeed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _relay(index: int, stream) -> None:
  for line in stream:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per process")
  parser.add_argument("--gpus", action="store_true", help="split this machine's GPUs between the processes instead")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- wonderland <subcommand> ...")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- wonderland train lalrm --config ... --workdir ...")
  if command[0] == "wonderland" and shutil.which("wonderland") is None:
    command = [sys.executable, "-m", "wonderland_jax.cli", *command[1:]]
  if args.processes < 1:
    parser.error("--processes must be at least 1")
  port = args.port or _free_port()
  processes, relays = [], []
  for index in range(args.processes):
    environment = dict(os.environ)
    if args.gpus:
      gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] or [
          str(i) for i in range(int(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
                                    .stdout.count("GPU ")))]
      share = len(gpus) // args.processes
      environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[index * share:(index + 1) * share])
    else:
      environment["JAX_PLATFORMS"] = "cpu"
      environment["XLA_FLAGS"] = (environment.get("XLA_FLAGS", "") +
                                  f" --xla_force_host_platform_device_count={args.devices_per_process}").strip()
    full = [*command, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(args.processes),
            "--process-id", str(index)]
    process = subprocess.Popen(full, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    relay = threading.Thread(target=_relay, args=(index, process.stdout), daemon=True)
    relay.start()
    processes.append(process)
    relays.append(relay)
  status = 0
  try:
    remaining = list(processes)
    while remaining:
      for process in list(remaining):
        code = process.poll()
        if code is None:
          continue
        remaining.remove(process)
        if code and not status:
          status = code
          for other in remaining:
            other.send_signal(signal.SIGTERM)
      if remaining:
        try:
          remaining[0].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
          pass
  except KeyboardInterrupt:
    for process in processes:
      process.send_signal(signal.SIGTERM)
    status = 130
  for process in processes:
    process.wait()
  for relay in relays:
    relay.join(timeout=10)
  return status


if __name__ == "__main__":
  sys.exit(main())
