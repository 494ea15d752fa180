#!/usr/bin/env python3
"""The quickstart's SFT stage on the GPU twice, under `single` and under `zero` stage 3, and their losses compared.

    tools/gpu/zero3_vs_single.py DSCHAT OUT_DIR [--device cuda] [--epochs 2]

One rank (one GPU): ZeRO-3's partition of every parameter, gradient and optimizer state is then the whole, its
gathers and reduce-scatters are local, and every step must give the single-process engine's loss (fp32; CUDA's
atomics in embedding backward make the last bits differ, hence a relative tolerance, not equality). Exit 1 when any
step's loss differs by more than --tolerance. Also runs on the CPU (--device cpu) so the script is checked here.
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pipeline(strategy: str, out: pathlib.Path, device: str, epochs: int) -> str:
    text = (ROOT / "configs" / "quickstart.toml").read_text()
    text = text.split("[[stage]]")[0] + "[[stage]]" + text.split("[[stage]]")[1]  # [pipeline] ... + the sft stage
    configs = (ROOT / "configs").as_posix()
    text = re.sub(r'path = "quickstart/', f'path = "{configs}/quickstart/', text)
    text = re.sub(r'datasets = \["quickstart/', f'datasets = ["{configs}/quickstart/', text)
    text = re.sub(r'output_dir = ".*"', f'output_dir = "{out.as_posix()}"\ndevice = "{device}"', text, count=1)
    text = re.sub(r"epochs = \d+", f"epochs = {epochs}", text, count=1)
    return text.replace("[models.actor]", f"[strategy]\n{strategy}\n\n[models.actor]", 1)


def losses(stage_dir: pathlib.Path) -> dict:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["value"] for r in rows if r.get("tag") == "train/loss"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dschat")
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, strategy in (("single", 'plugin = "single"'), ("zero3", 'plugin = "zero"\nstage = 3')):
        toml = args.out / f"{name}.toml"
        toml.write_text(pipeline(strategy, args.out / name, args.device, args.epochs))
        result = subprocess.run([args.dschat, "run", str(toml)], capture_output=True, text=True)
        (args.out / f"{name}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            print(f"{name}: dschat run failed ({result.returncode}); tail:\n{(result.stdout + result.stderr)[-2000:]}")
            return 1
        runs[name] = losses(args.out / name / "sft")
    single, zero3 = runs["single"], runs["zero3"]
    if not single or sorted(single) != sorted(zero3):
        print(f"different steps logged: single {len(single)}, zero3 {len(zero3)}")
        return 1
    worst = max(abs(single[s] - zero3[s]) / max(abs(single[s]), 1e-12) for s in single)
    first, last = min(single), max(single)
    print(f"device {args.device}: {len(single)} SFT steps; loss single {single[first]:.6f} -> {single[last]:.6f}, "
          f"zero3 {zero3[first]:.6f} -> {zero3[last]:.6f}; largest relative difference {worst:.2e} "
          f"(tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
