#!/usr/bin/env bash
# Runs on a machine with two or more GPUs, from the repository root, with the release binary
# carried (cargo build --release -p cp-bench --bin cp-ring-bench):
#   scripts/nccl_failure.sh OUT_DIR
# 1. Two processes, one per GPU, in torchrun's convention: both check their rows (success path).
# 2. The same job with rank 1 crashing (abort) at its first ring shift: rank 0 must end with an
#    error naming the problem within its timeout (10 s) plus slack, never hang.
set -uo pipefail
out=${1:?usage: scripts/nccl_failure.sh OUT_DIR}
mkdir -p "$out"
bin=${CP_BIN_DIR:-./target/release}/cp-ring-bench
export CP_KERNEL_CACHE=${CP_KERNEL_CACHE:-/tmp/cp-kernel-cache} MASTER_ADDR=127.0.0.1 WORLD_SIZE=2 NCCL_NVLS_ENABLE=0
status=0

echo "== two processes, one GPU each"
export MASTER_PORT=29611
RANK=0 LOCAL_RANK=0 timeout 120 $bin nccl-process >"$out/ok-rank0.log" 2>&1 &
p0=$!
RANK=1 LOCAL_RANK=1 timeout 120 $bin nccl-process >"$out/ok-rank1.log" 2>&1 &
p1=$!
wait $p0; s0=$?
wait $p1; s1=$?
cat "$out/ok-rank0.log" "$out/ok-rank1.log"
echo "exit codes: rank 0 $s0, rank 1 $s1"
[ $s0 -eq 0 ] && [ $s1 -eq 0 ] || status=1

echo "== rank 1 crashes at its first ring shift; rank 0 must fail within 10 s + slack"
export MASTER_PORT=29612
start=$(date +%s.%N)
RANK=0 LOCAL_RANK=0 timeout 120 $bin nccl-process --timeout-s 10 >"$out/die-rank0.log" 2>&1 &
p0=$!
RANK=1 LOCAL_RANK=1 timeout 120 $bin nccl-process --timeout-s 10 --die-at-shift 1 >"$out/die-rank1.log" 2>&1 &
p1=$!
wait $p1; s1=$?
t1=$(date +%s.%N)
wait $p0; s0=$?
t0=$(date +%s.%N)
cat "$out/die-rank0.log" "$out/die-rank1.log"
after=$(python3 -c "print(round($t0 - $t1, 2))")
echo "exit codes: rank 0 $s0 (ended ${after} s after rank 1 died), rank 1 $s1 (crashed on purpose)"
# 124: `timeout` killed it, i.e. it hung.
if [ $s0 -eq 0 ] || [ $s0 -eq 124 ]; then status=1; fi
if python3 -c "import sys; sys.exit(0 if $after > 30 else 1)"; then status=1; fi
echo "failure test: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
