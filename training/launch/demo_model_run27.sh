#!/usr/bin/env bash
# The committed demo model (run 27, docs/demo-512-run-27.md) from run 9b: the last part of `make demo-model`.
#
#   run 17  600 new studies (seed 24) and a vision tower trained densely on their boxes (25 min), from run 9b
#   run 18  the tower trained on with a token head (15 min), transplanted under run 9b's language model, then
#           6,000 grounding steps with the tower frozen (docs/demo-512-run-18.md)
#   run 22  1,500 grounding steps with the lesion-free answers three times over (docs/demo-512-run-19.md)
#   run 27  run 23's phase 2 (stage-1 mix, five-step chains, DPO) and the last grounding stage with the lesion-free
#           answers five times over, then the card, with the pre-read's operating point fitted at 1 false positive
#           per volume on 6 development studies (training/configs/demo_model_512_run27.yaml)
#
# Resumable: every step is skipped when its output is there (the recipes resume stage by stage). About 1 h 50 min
# on 2 CPU cores after run 9b. Usage: bash training/launch/demo_model_run27.sh [RUN9B_DIR [OUT_DIR]]
set -euo pipefail

PY=${PY:-python}
R9B=${1:-checkpoints/demo-512-run9b}
OUT=${2:-resources/models/demo}
R17=checkpoints/demo-recipe-512-run17
R18=checkpoints/run18
R22=checkpoints/run22
SFT=training/configs/sft_stage1_demo.yaml

[ -f "$R9B/model.safetensors" ] || { echo "demo_model_run27: no model in $R9B (run 9b: make demo-model)" >&2; exit 1; }

step() { echo "== $*" >&2; }

step "run 17: studies and the dense vision tower"
$PY -m training.demo_model --config training/configs/demo_model_512_run17.yaml --set "init_from=$R9B" \
  --stop-after vision -v

step "run 18: the token head, the transplant, 6,000 grounding steps"
if [ ! -f "$R18/vision/token_head.pt" ]; then
  $PY -m training.vision_pretrain --corpus "$R17/phantoms-train" --eval "$R17/phantoms-eval" --out "$R18/vision" \
    --like "$R9B" --image-size 224 --patch 14 --minutes 15 --lr 5e-4 --readout token \
    --init-tower "$R17/vision/vision_tower" -v
fi
if [ ! -f "$R18/skeleton/model.safetensors" ]; then
  $PY -c "import sys; from pathlib import Path; from training.demo_model import transplant_vision
transplant_vision(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), 0.25, 0, 'run 18',
                  token_head=Path(sys.argv[4]))" \
    "$R18/skeleton" "$R9B" "$R18/vision/vision_tower" "$R18/vision/token_head.pt"
fi
$PY -m training.demo_model --mix-meta "$R17/phantoms-train" meta_grounding.json phantom_grounding=1
if [ ! -d "$R18/sft-grounding/final" ]; then
  $PY -m training.sft --config $SFT --resume --set "model.path=$R18/skeleton" \
    --set "data.meta=$R17/phantoms-train/meta_grounding.json" --set "train.output_dir=$R18/sft-grounding" \
    --set train.max_steps=3000 --set train.freeze_vision=true --set train.lr=5.0e-4 --set train.save_steps=1000
fi
if [ ! -d "$R18/sft-grounding-2/final" ]; then
  $PY -m training.sft --config $SFT --resume --set "model.path=$R18/sft-grounding/final" \
    --set "data.meta=$R17/phantoms-train/meta_grounding.json" --set "train.output_dir=$R18/sft-grounding-2" \
    --set train.max_steps=3000 --set train.freeze_vision=true --set train.lr=3.0e-4 --set train.save_steps=1000
fi

step "run 22: 1,500 grounding steps, the lesion-free answers three times over"
$PY -m training.demo_model --mix-meta "$R17/phantoms-train" meta_grounding_empty3.json \
  phantom_grounding=1,phantom_grounding_empty=2
if [ ! -d "$R22/sft-grounding-empty/final" ]; then
  $PY -m training.sft --config $SFT --resume --set "model.path=$R18/sft-grounding-2/final" \
    --set "data.meta=$R17/phantoms-train/meta_grounding_empty3.json" \
    --set "train.output_dir=$R22/sft-grounding-empty" --set train.max_steps=1500 --set train.freeze_vision=true \
    --set train.lr=2.0e-4 --set train.save_steps=500
fi

step "run 27: run 23's phase 2 and the last grounding stage, then the card and the pre-read's operating point"
$PY -m training.demo_model --config training/configs/demo_model_512_run27.yaml \
  --set "init_from=$R22/sft-grounding-empty/final" --out "$OUT" -v
