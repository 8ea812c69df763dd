#!/usr/bin/env bash
# DIME-FM: distill OpenAI CLIP ViT-L/14 into a ViT-B/32 from unpaired images and sentences,
# with the official hyper-parameters (configs/recipes/dime-fm-vitl14-to-vitb32.args).
# Usage: examples/dime_fm_vitl14_to_vitb32.sh IMAGE_SHARDS NUM_IMAGES SENTENCE_FILES [EVAL_DIR] [GPUS]
set -euo pipefail
IMAGES=${1:?image-only webdataset shards, e.g. '/data/images/{00000..03999}.tar'}
NUM_IMAGES=${2:?number of images, e.g. 40000000}
TEXTS=${3:?sentence files, e.g. '/data/sentences/*.txt'}
EVAL=${4:-}
GPUS=${5:-8}
cd "$(dirname "$0")/.."
extra=()
if [ -n "$EVAL" ]; then extra+=(--eval-data "$EVAL"); fi
torchrun --nproc_per_node "$GPUS" -m openclip_distill.main @configs/recipes/dime-fm-vitl14-to-vitb32.args \
    --batch-size $((640 / GPUS)) --train-images "$IMAGES" --train-num-samples "$NUM_IMAGES" \
    --train-texts "$TEXTS" "${extra[@]}"
