#!/bin/bash
# The script of the H200 run of 2026-12-04 (second session): three training runs side by side on one GPU
# (GPFF fine-tuning on the 20k-molecule set, a transport-propagator fine-tune, a wider transport
# propagator from scratch), each sized to BUDGET seconds by train_on_gpu.py, and tests/test_gpu.py beside
# them (all but the OpenMM CUDA-platform test, which passed on the first H200 run and whose code has not
# changed since: the 64 MiB carry had no room for OpenMM's wheels beside the data). Carried: .whl/ (cp312
# wheels: ase 3.29.0, MDAnalysis 2.11.0, mda-xdrlib, mmtf-python, nequip 0.19.1, omegaconf 2.3.1,
# antlr4-python3-runtime 4.9.3, matscipy 1.3.1) and .gpu/ (the data as .tar.xz, made here by
# `engine-plugins data molecules out/molecules20k --n-molecules 19500 --per-size 4500` and
# `engine-plugins simulate transport`, its dump coordinates rounded to 1e-3 A to fit the carry).
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."  # the repository root
BUDGET=${BUDGET:-300}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
L=/tmp/logs  # the probes' JSON; what comes back is under OUT (at most 8 files)
mkdir -p out $L
for f in .gpu/*.tar.xz; do tar -xJf $f -C out; done
ls out
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/env.txt
python3 -c "import torch; print('torch', torch.__version__)" | tee -a $OUT/env.txt
D=docs/gpu_h200_2026-12-04b
C=$D/configs  # (these configs were in engine_plugins/train/configs/ when they ran, as the logs say)
date
OMP_NUM_THREADS=4 timeout $((BUDGET + 200)) python3 $D/train_on_gpu.py gpff $C/gpff_qm9like_stage4_gpu.json $L --budget-s $BUDGET > $OUT/gpff.log 2>&1 &
OMP_NUM_THREADS=2 timeout $((BUDGET + 200)) python3 $D/train_on_gpu.py flow $C/propagator_transport_gpu_finetune.json $L --budget-s $BUDGET > $OUT/finetune.log 2>&1 &
OMP_NUM_THREADS=2 timeout $((BUDGET + 200)) python3 $D/train_on_gpu.py flow $C/propagator_transport_gpu_wide.json $L --budget-s $BUDGET > $OUT/wide.log 2>&1 &
sleep 60  # the probes first, then the tests beside the real runs
OMP_NUM_THREADS=4 timeout 240 python3 -m pytest -v -p no:cacheprovider tests/test_gpu.py -k "not torchforce" > $OUT/test_gpu.txt 2>&1
grep -E "passed|failed" $OUT/test_gpu.txt | tail -2
wait
date
tail -n 3 $OUT/*.log; cat $L/*.json
cd out && tar -czf $OUT/results.tar.gz */model.pt */history.json */config.json */*.pt 2>/dev/null; cd ..
ls -la $OUT
