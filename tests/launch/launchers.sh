#!/usr/bin/env bash
# The 2-rank quickstart (configs/quickstart-2rank.toml) under each launcher dschat reads: torchrun, Open MPI's
# mpirun, and srun on a one-node Slurm that this script starts (munged, slurmctld and slurmd, all in a temp
# folder with their own key, socket, ports and state) and stops on exit. Every stage's final metrics must be the
# same under all three: same seed, same world size, same Gloo sums. Exit 77 (ctest's skip) when a launcher is
# missing or Slurm cannot run here.
#
#   tests/launch/launchers.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
source_dir="$(cd "$2" && pwd)"
out="$build/test-output/launchers"
skip() { echo "SKIP: $*"; exit 77; }

exe="$build/bin/dschat"
torchrun="$source_dir/.venv/bin/torchrun"
python="$source_dir/.venv/bin/python"
[ -x "$exe" ] || { echo "no dschat at $exe (build it first)"; exit 1; }
[ -x "$torchrun" ] || skip "no torchrun at $torchrun (tools/setup.sh makes the venv)"
for tool in mpirun srun sinfo scontrol scancel slurmctld slurmd munged; do
  command -v "$tool" >/dev/null || skip "$tool is missing (tools/setup.sh installs openmpi-bin, slurm-wlm, munge)"
done
[ "$(id -u)" -eq 0 ] || skip "slurmd must run as root to start tasks"

cpus="$(nproc)"  # before OMP_NUM_THREADS, which nproc reports instead
# torchrun sets OMP_NUM_THREADS=1 for several ranks per node, mpirun and srun set nothing: one thread a rank
# everywhere, so each op's float sums are cut the same way and the runs can be compared bit for bit.
export OMP_NUM_THREADS=1
rm -rf "$out"
mkdir -p "$out"

# Paths as printed (and as README.md shows them): relative to the source folder when the build is inside it.
cd "$source_dir"
rel() { realpath --relative-to="$source_dir" "$1"; }
config="configs/quickstart-2rank.toml"

# --- one-node Slurm --------------------------------------------------------------------------------------------
tmp="$(mktemp -d /tmp/dschat-launchers.XXXXXX)"
chmod 700 "$tmp"
stop_slurm() {
  set +e
  if [ -f "$tmp/slurm.conf" ] && [ -f "$tmp/slurmctld.pid" ]; then
    SLURM_CONF="$tmp/slurm.conf" timeout 10 scancel --quiet --full --user root >/dev/null 2>&1
  fi
  for daemon in slurmd slurmctld munged; do
    [ -f "$tmp/$daemon.pid" ] || continue
    pid="$(cat "$tmp/$daemon.pid")"
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap stop_slurm EXIT

free_port() {  # a TCP port nobody listens on, below Linux's ephemeral ports (32768-)
  local port
  while :; do
    port=$((22000 + RANDOM % 10000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

start_slurm() {
  mkdir -p "$tmp/state" "$tmp/spool"
  dd if=/dev/urandom of="$tmp/munge.key" bs=1024 count=1 status=none
  chmod 400 "$tmp/munge.key"
  munged --force --socket="$tmp/munge.socket" --key-file="$tmp/munge.key" --log-file="$tmp/munged.log" \
         --pid-file="$tmp/munged.pid" --seed-file="$tmp/munged.seed" ||
    skip "munged does not start: $(tail -n 3 "$tmp/munged.log" 2>/dev/null)"
  local ctld_port; ctld_port="$(free_port)"
  local slurmd_port; slurmd_port="$(free_port)"
  cat >"$tmp/slurm.conf" <<EOF
ClusterName=dschat-ci
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
FirstJobId=$((1 + RANDOM % 9999))
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$((cpus < 2 ? 2 : cpus)) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
  export SLURM_CONF="$tmp/slurm.conf"
  slurmctld -i || skip "slurmctld does not start: $(tail -n 3 "$tmp/slurmctld.log" 2>/dev/null)"
  slurmd -N localhost || skip "slurmd does not start: $(tail -n 3 "$tmp/slurmd.log" 2>/dev/null)"
  for _ in $(seq 100); do
    [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = "idle" ] && return
    sleep 0.2
  done
  skip "the Slurm node never became idle: $(sinfo 2>&1 | tail -n 2); $(tail -n 3 "$tmp/slurmd.log")"
}

# --- the three runs --------------------------------------------------------------------------------------------
declare -A seconds
run() {  # run NAME KIND COMMAND...: the quickstart into $out/NAME (given relative to the config, as the override
         # resolves it), its log in $out/NAME.log; prints the line as a shell would take it. KIND: the launcher
         # dschat must say it found.
  local name="$1" kind="$2"; shift 2
  local dir; dir="$(realpath -m --relative-to="$(dirname "$config")" "$out/$name")"
  local line="$* run $config --set 'pipeline.output_dir=\"$dir\"'"
  echo "[$name] $line"
  echo "$line" >"$out/$name.cmd"
  local start; start="$(date +%s%N)"
  # Each run well within ctest's 900 s, so the trap (not ctest's kill) stops Slurm.
  if ! timeout 270 "$@" run "$config" --set "pipeline.output_dir=\"$dir\"" >"$out/$name.log" 2>&1; then
    tail -n 30 "$out/$name.log"
    echo "FAIL: the quickstart did not run under $name (log: $out/$name.log)"
    exit 1
  fi
  seconds[$name]=$(( ($(date +%s%N) - start) / 1000000 ))e-3
  local found; found="$(grep -m1 "^rank 0: " "$out/$name.log" || true)"
  echo "[$name] done in $(( ${seconds[$name]%e-3} / 1000 )) s; dschat $found"
  [[ "$found" == "rank 0: $kind rank 0/2 "* ]] || { echo "FAIL: under $name dschat did not find $kind's variables"; exit 1; }
}

mpi_flags=()
[ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
[ "$cpus" -lt 2 ] && mpi_flags+=(--oversubscribe)

run torchrun torchrun "$(rel "$torchrun")" --standalone --nproc-per-node 2 --no-python "$(rel "$exe")"
run mpirun mpirun mpirun "${mpi_flags[@]}" -n 2 "$(rel "$exe")"
start_slurm
run srun slurm srun -n 2 "$(rel "$exe")"

# --- the same final metrics ------------------------------------------------------------------------------------
for name in torchrun mpirun srun; do echo "${seconds[$name]}" >"$out/$name.seconds"; done
"$python" - "$out" <<'EOF'
import json, pathlib, re, sys

out = pathlib.Path(sys.argv[1])
launchers = ["torchrun", "mpirun", "srun"]
# Wall-clock figures differ from run to run; everything else is computed and must match exactly.
timing = re.compile(r"^time/|_per_s$|^tflops")

def finals(name):
    rows = {}
    for path in sorted((out / name).glob("*/metrics.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[(path.parent.name, row["tag"])] = (row["step"], row["value"])
    return rows

final = {name: finals(name) for name in launchers}
for name in launchers:
    stages = sorted({stage for stage, _ in final[name]})
    if stages != ["rlhf", "rm", "sft"]:
        sys.exit(f"FAIL: {out / name} holds the metrics of stages {stages}, expected rlhf, rm and sft")
keys = sorted(set().union(*final.values()))
compared = [k for k in keys if not timing.search(k[1])]
headline = [("sft", "train/loss"), ("sft", "eval/perplexity"), ("rm", "train/loss"), ("rm", "eval/accuracy"),
            ("rm", "eval/chosen_score"), ("rm", "eval/rejected_score"), ("rlhf", "reward/mean"),
            ("rlhf", "eval/reward"), ("rlhf", "eval/kl"), ("rlhf", "eval/ema_reward")]
shown = [k for k in headline if k in compared]

width = max([len(f"{s} {t}") for s, t in shown] + [24])
print(f"{'final metric (stage tag)':<{width}}  " + "  ".join(f"{n:>12}" for n in launchers))
for stage, tag in shown:
    print(f"{stage + ' ' + tag:<{width}}  " +
          "  ".join(f"{final[n][(stage, tag)][1]:12.6g}" if (stage, tag) in final[n] else f"{'-':>12}"
                    for n in launchers))
secs = {n: float((out / f"{n}.seconds").read_text()) for n in launchers}
print(f"{'wall-clock seconds':<{width}}  " + "  ".join(f"{secs[n]:12.0f}" for n in launchers))

bad = []
for key in compared:
    values = [final[n].get(key) for n in launchers]
    if any(v != values[0] for v in values):
        bad.append(f"  {key[0]} {key[1]}: " + ", ".join(f"{n} {v}" for n, v in zip(launchers, values)))
if bad:
    print(f"FAIL: {len(bad)} of {len(compared)} final metrics (stage, tag: (step, value)) differ between "
          "the launchers:\n" + "\n".join(bad))
    sys.exit(1)
print(f"ok: all {len(compared)} final metrics of {len({k[0] for k in compared})} stages are equal under "
      + ", ".join(launchers))
EOF
