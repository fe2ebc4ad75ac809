#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before a GPU check: puts into .whl/ (git-ignored through
# .git/info/exclude) what the GPU machine's image lacks for benchmarks/gpu_check.sh, as Python 3.12 x86-64 wheels
# (and two pure-Python source archives): Hydra and OmegaConf (hydralign's config), DeepSpeed and its small needs,
# Liger's kernels and bitsandbytes (QLoRA). About 48 MB: the device tool carries at most 64 MiB with the tree.
# flash-attn is not among them: PyPI has no wheel of it (its source build needs the machine's CUDA and ~30 min), so
# the packed_varlen check is SKIPPED unless the machine already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d .whl \
    "hydra-core==1.3.*" "omegaconf>=2.2,<2.4" "liger-kernel" "bitsandbytes>=0.46.1" hjson py-cpuinfo msgpack ninja
python3 -m pip download -q --no-deps --no-binary=:all: -d .whl "antlr4-python3-runtime==4.9.3" "deepspeed>=0.16,<0.20"
du -sh .whl
