#!/bin/bash
# session 10, call 7 (1 GPU): the committed v6.2 (the wide ping-pong D=64 kernel keeps the early
# "scrubbed" wait): every kernel against the oracle, then the ring and model-API GPU checks.
export CP_KERNEL_CACHE=$PWD/.devcache
R=/tmp/k; mkdir -p $R
pack() { (cd $R && tar czf $OUT/s10c7.tgz .); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee $R/gpu.txt
( time timeout 170 .devbin/cp-gpu-bench check ) > $R/check.log 2>&1; echo "check rc=$?"
grep -E "FAILED|rror|mismatch|^real" $R/check.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/check.log)"; gzip $R/check.log; pack
( time timeout 200 .devbin/gpu_checks --test-threads 1 every_ring_algorithm the_model_api ) > $R/suite.log 2>&1; echo "suite rc=$?"
grep -E "^test |test result|FAILED|panicked|^real" $R/suite.log | head; echo "ok lines: $(grep -c '\[ok\]' $R/suite.log)"; gzip $R/suite.log; pack
