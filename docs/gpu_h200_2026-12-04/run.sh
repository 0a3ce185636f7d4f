#!/bin/bash
# The script of the second H200 run (2026-12-04), kept as the record of what produced the figures in
# this folder. The GPU machine has its own torch 2.11 and no network, so the packages this project needs
# beyond it were carried as cp312 wheels in .whl/ (pip download --no-deps: ase 3.29.0, MDAnalysis 2.11.0,
# GridDataFormats 1.2.0, mda-xdrlib 0.2.0, mmtf-python 1.1.3, mrcfile 1.5.4, openmm 8.6.1,
# OpenMM-CUDA-13 8.6.1, acellera-openmmtorch-cu13 1.10, nequip 0.19.1, omegaconf 2.3.1,
# antlr4-python3-runtime 4.9.3, matscipy 1.3.1), with out/molecules and one transport case in .gpu/.
# The first run (test_gpu_run1.txt, env_run1.txt) lacked the last four wheels, ran all of test_gpu.py
# and bench device with --replicas 1 3 5 --jumps 10 --md-steps 2000; its bench was cut by its timeout.
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."  # the repository root
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
date
timeout 60 python3 -m pytest -v -p no:cacheprovider tests/test_gpu.py -k "training or torchforce" 2>&1 | tee $OUT/test_gpu2.txt | grep -E "PASS|FAIL|SKIP|Error|passed|failed" | head -20
date
timeout 120 python3 -m engine_plugins.cli bench device --tasks propagate-transport propagate-cg md-cg openmm-cg \
  --replicas 1 3 --jumps 5 --md-steps 1000 --output $OUT/bench_propagate.json 2>&1 | tr '\r' '\n' | grep --line-buffered -v "it/s\]\|task/s\]" \
  | tee $OUT/bench_propagate.txt | tail -22
date
timeout 125 python3 -m engine_plugins.cli bench device --tasks train-propagator train-gpff train-rm generate relax \
  --molecules 64 --nfe 32 --train-steps 10 --data out/molecules --transport .gpu/transport/Li0.25-s1.55_T0800 \
  --output $OUT/bench_other.json 2>&1 | tr '\r' '\n' | grep --line-buffered -v "it/s\]\|task/s\]" | tee $OUT/bench_other.txt | tail -22
date
