#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with the release binary carried:
#   scripts/gpu_sustained.sh OUT_DIR
# Sustained rates of our prefill kernel and of SDPA's cuDNN kernel, timed the same way (half a
# second of warm-up, then ~3 s of launches back to back between two CUDA events), taking turns
# twice per shape, with the SM clock and power sampled throughout (nvidia-smi every 100 ms).
# `cp-gpu-bench bench` and `scripts/sdpa_bench.py` time 20 launches each: for short kernels the
# card has not settled to the clock it holds under load (session 11: cuDNN 598-608 TFLOP/s at
# T=4K B=4 there, 515-524 sustained).
# Several builds or variants of ours take turns with cuDNN when CP_VARIANTS holds one per line:
# `LABEL BINARY [PROFILE ARGS...]` (e.g. "old .devbin/cp-gpu-bench-old" and "new .devbin/cp-gpu-bench
# --schedule by-key-range"); CP_SHAPES replaces the shapes below (lines `TOKENS BATCH HEAD_DIM
# REPEAT [--off-diagonal]`). Each run is marked with its label in marks.txt and sustained.txt.
set -uo pipefail
out=${1:?usage: scripts/gpu_sustained.sh OUT_DIR}
mkdir -p "$out"
export CP_KERNEL_CACHE=${CP_KERNEL_CACHE:-/tmp/cp-kernel-cache} PYTHONUNBUFFERED=1
bin=${CP_BIN_DIR:-./target/release}/cp-gpu-bench
variants=${CP_VARIANTS:-"ours $bin"}
shapes=${CP_SHAPES:-"4096 4 128 2500
16384 1 128 800
65536 1 128 50
131072 1 128 12
16384 1 64 1200
16384 1 128 400 --off-diagonal"}
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 100 > "$out/smi.csv" 2>&1 &
smi=$!
: > "$out/marks.txt"
: > "$out/sustained.txt"
# tokens batch head-dim repeat [--off-diagonal]: about 3 s of launches each on an H100.
while read -r t b d n extra; do
    for round in 1 2; do
        while read -r label vbin args; do
            echo "$label $t $b $d $extra $(date +%s.%N)" >> "$out/marks.txt"
            echo -n "$label: " >> "$out/sustained.txt"
            timeout 90 $vbin profile --tokens "$t" --batch "$b" --head-dim "$d" --repeat "$n" $extra $args < /dev/null 2>&1 | grep launches | tee -a "$out/sustained.txt"
        done <<< "$variants"
        echo "cudnn $t $b $d $extra $(date +%s.%N)" >> "$out/marks.txt"
        echo -n "cudnn: " >> "$out/sustained.txt"
        timeout 90 python3 scripts/sdpa_sustained.py --tokens "$t" --batch "$b" --head-dim "$d" --repeat "$n" $extra < /dev/null 2>&1 | tail -1 | tee -a "$out/sustained.txt"
    done
done <<< "$shapes"
echo "end $(date +%s.%N)" >> "$out/marks.txt"
kill $smi
python3 scripts/smi_phases.py "$out/smi.csv" "$out/marks.txt" | tee "$out/clocks.txt"
