#!/bin/bash
# session 11, call 11 (1 GPU): is the off-diagonal gap the ragged last wave? 16K queries make 4096
# equal items (31.03 per multiprocessor of 132), 16896 make 4224 (exactly 32 each): sustained rates,
# ours and cuDNN, at both.
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 CP_BIN_DIR=.devbin
R=$OUT/call11; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
for t in 16384 16896; do for r in 1 2; do
  timeout 60 .devbin/cp-gpu-bench profile --tokens $t --off-diagonal --repeat 400 < /dev/null 2>&1 | grep launches | tee -a $R/sustained.txt
  timeout 60 python3 scripts/sdpa_sustained.py --tokens $t --off-diagonal --repeat 400 < /dev/null 2>&1 | tail -1 | tee -a $R/sustained.txt
done; done
