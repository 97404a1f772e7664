#!/bin/bash
# session 9, call 7 (4 GPUs): issue 11's rebind in one upload and one scatter kernel per rank —
# the rebound-graph check against the f64 oracle (every device argument compared), then decode
# latency with one graph per shape rebound every token, 128K (B=1, 8) and 1M (B=1).
export CP_KERNEL_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s9c7.tgz .); }
nvidia-smi -L > $R/gpu.txt
( time timeout 120 .devbin/gpu_checks graph_replays --test-threads=1 --nocapture ) > $R/gpu-checks.log 2>&1; echo "gpu_checks rc=$? $(date +%T)"
grep -E "test result|FAILED|panicked|^real" $R/gpu-checks.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/gpu-checks.log), exact: $(grep -c 'device arguments exact' $R/gpu-checks.log)"; gzip $R/gpu-checks.log; pack
timeout 80 .devbin/cp-ring-bench decode --world-sizes 4 --contexts 131072 --batches 1,8 --iters 100 --growing-iters 30 --graphs --json $R/decode-128k.json > $R/decode-128k.log 2>&1; echo "decode 128k rc=$? $(date +%T)"
grep -E "N=4 .*(graph|rebound)|N=1 .*steady" $R/decode-128k.log | cut -c1-120; pack
timeout 70 .devbin/cp-ring-bench decode --world-sizes 4 --contexts 1048576 --batches 1 --iters 60 --growing-iters 20 --graphs --json $R/decode-1m.json > $R/decode-1m.log 2>&1; echo "decode 1m rc=$? $(date +%T)"
grep -E "N=4 .*(graph|rebound)|N=1 .*steady" $R/decode-1m.log | cut -c1-120; pack
