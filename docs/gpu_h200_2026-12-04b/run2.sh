#!/bin/bash
# The second H200 call of 2026-12-04 (second session): two GPFF runs side by side on one GPU, each sized
# to BUDGET seconds by train_on_gpu.py: stage 5 continues the first call's stage-4 model (carried as
# .gpu/gpff_stage4_gpu.pt) at batch 256; "wide" trains a 4-layer, 64-feature model from scratch at
# batch 128. Carried: .whl/ (as in run.sh) and .gpu/ (molecules20k.tar.xz and the stage-4 model).
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."  # the repository root
BUDGET=${BUDGET:-240}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
L=/tmp/logs
mkdir -p out $L
for f in .gpu/*.tar.xz; do tar -xJf $f -C out; done
D=docs/gpu_h200_2026-12-04b
C=$D/configs  # (these configs were in engine_plugins/train/configs/ when they ran, as the logs say)
date
OMP_NUM_THREADS=6 timeout $((BUDGET + 150)) python3 $D/train_on_gpu.py gpff $C/gpff_qm9like_stage5_gpu.json $L --budget-s $BUDGET > $OUT/stage5.log 2>&1 &
OMP_NUM_THREADS=6 timeout $((BUDGET + 150)) python3 $D/train_on_gpu.py gpff $C/gpff_qm9like_wide_gpu.json $L --budget-s $BUDGET > $OUT/wide.log 2>&1 &
wait
date
cd out && tar -czf $OUT/results2.tar.gz */model.pt */history.json */config.json 2>/dev/null; cd ..
ls -la $OUT
