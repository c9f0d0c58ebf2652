#!/usr/bin/env bash
# A PETRIC-layout dataset from the command line (SyneRBI/PETRIC's folder layout: prompts.hs,
# mult_factors.hs, additive_term.hs, OSEM_image.hv, PETRIC/reference_image.hv, PETRIC/VOI_*.hv).
# With a real dataset, skip the simulate line and pass its folder instead of case_2d.
set -euo pipefail
out=${1:-petric_cli_out}
# No command replaces earlier results: rerun into a new folder, or add --overwrite to each line.
sirf-diffusion simulate --out "$out/case_2d" --counts 2.5 --seed 0
# the embedded PyTorch physics (always available)
sirf-diffusion reconstruct "$out/case_2d" --method osem --out "$out/osem"
sirf-diffusion reconstruct "$out/case_2d" --method lisch --out "$out/lisch"   # 20 steps, K 30, mean of 4
# the same with STIR's projector, through SIRF or through STIR's Python bindings
if python3 -c "import sirf.STIR" 2>/dev/null; then
  sirf-diffusion reconstruct "$out/case_2d" --method lisch --physics sirf --out "$out/lisch_sirf"
fi
if python3 -c "import stir" 2>/dev/null; then
  sirf-diffusion reconstruct "$out/case_2d" --method lisch --physics stir --out "$out/lisch_stir"
fi
ls "$out"/*/metrics.json
