#!/usr/bin/env python3
"""`dschat plan` against what `dschat run` measures: per stage, the plan's peak and the stage's own peak resident
set (stage_dir/memory.json, VmHWM reset at each stage's start; on a GPU the CUDA caching allocator's peak), and
their ratio.

    tools/bench/plan_vs_peak.py configs/quickstart.toml
    tools/bench/plan_vs_peak.py configs/smollm2.toml --set stage.sft.max_steps=3 --set stage.rm.max_steps=3 \
        --set stage.rlhf.max_steps=3 [--set models.actor.dtype='"fp32"' --set models.critic.dtype='"fp32"']

Each extra --set is passed to both commands; the run writes into a temporary output_dir. The plan's peak is its
largest phase (states held through the stage + that phase's activations and caches); the measured peak includes
everything else the process holds (the allocator's cache, glibc's heap, libraries).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = parser.parse_args()
    dschat = os.path.join(args.build, "bin", "dschat")
    threads = os.cpu_count()
    for line in machine.describe(threads):
        print(line)
    sets = [x for o in args.overrides for x in ("--set", o)]
    plan = subprocess.run([dschat, "plan", args.pipeline, "--json", *sets], capture_output=True, text=True)
    if plan.returncode not in (0, 2):
        sys.exit(f"dschat plan failed ({plan.returncode}):\n{plan.stdout}\n{plan.stderr}")
    planned = json.loads(plan.stdout[plan.stdout.index("{"):])
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([dschat, "run", args.pipeline, *sets, "--set", f'pipeline.output_dir="{out}"'],
                             capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"dschat run failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
        print(f"\n{args.pipeline} {' '.join(args.overrides)}")
        print(f"{'stage':<8} {'plan peak':>10} {'phase':<12} {'measured':>10} {'measured/plan':>14}")
        for stage in planned["stages"]:
            with open(os.path.join(out, stage["stage"], "memory.json")) as f:
                memory = json.load(f)
            measured = memory.get("peak_device_bytes", memory["peak_resident_bytes"])
            print(f"{stage['stage']:<8} {stage['peak_bytes'] / 1e9:>8.2f} GB {stage['peak_phase']:<12} "
                  f"{measured / 1e9:>8.2f} GB {measured / stage['peak_bytes']:>13.2f}x")


if __name__ == "__main__":
    main()
