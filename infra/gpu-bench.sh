#!/usr/bin/env bash
# The GPU checks and benchmarks, in one go, for a machine with one CUDA GPU (docs/BENCHMARKS.md, "GPU").
#
#   MINILM=/path/to/all-MiniLM-L6-v2 RUN=/path/to/run SNAPSHOT=/path/to/snapshot OUT=var/gpu infra/gpu-bench.sh
#
# Needs a Python with this repository importable (PYTHONPATH or pip install -e .) and its model
# dependencies (torch with CUDA, transformers, faiss, pyarrow, pyyaml, safetensors, tqdm, pytest); no Spark,
# MLflow or Airflow. MINILM: a local MiniLM folder (the weights do not matter for the throughput numbers).
# RUN: a run folder with gnn/ and tokenizer/ trained on SNAPSHOT (the CPU quality benchmark's), so the GPU run
# differs from the CPU one only in how long LLM4Rec trains; DATASET names its data set (default ml100k). Size
# QUALITY_LIMIT to the training prefixes: ml100k 97,171, lastfm 49,281, beauty 131,413 per epoch.
# Steps, in order of importance for a short lease, each with its own time limit; every result file is copied
# into OUT as soon as it exists (at most 8 files):
#   1. LLM4Rec inference users/s in bf16 (history, paper-style history, ID-only prompts) and training samples/s
#   2. the CUDA tests (pytest -m gpu): bf16 training with resume, tokenizer training on the GPU
#   3. LightGCN seconds per epoch on a synthetic 1M-interaction graph
#   4. TokenRec on DATASET: LLM4Rec trained on every training prefix for LLM_EPOCHS epochs
# STEPS picks some of them (default: all four).
set -u
OUT=${OUT:-var/gpu}
STEPS=${STEPS:-"speed-llm pytest lightgcn quality"}
LLM_EPOCHS=${LLM_EPOCHS:-4}
DATASET=${DATASET:-ml100k}
QUALITY_LIMIT=${QUALITY_LIMIT:-270}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LOG="$OUT/gpu-bench.log"
PY=${PYTHON:-python3}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, report the exit status and seconds
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s" | tee -a "$LOG"
}
keep() { for f in "$@"; do [ -f "$f" ] && cp "$f" "$OUT/"; done; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

{ nvidia-smi -L; "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'; } 2>&1 | tee -a "$LOG"

wanted speed-llm && step speed-llm-gpu 110 "$PY" -m tokenrec.bench.llm_speed --backbones "$MINILM" --device cuda --dtypes bf16 \
    --prompts history history_paper id_only --batches 1024 4096 --users 65536 --train-batch 256 --train-steps 20 \
    --name speed-llm-gpu
keep docs/benchmarks/speed-llm-gpu.json

wanted pytest && step pytest-gpu 90 "$PY" -m pytest -q -m gpu tests/models -p no:cacheprovider
wanted lightgcn && step speed-lightgcn-1m-gpu 70 "$PY" -m tokenrec.bench.gnn_speed --synthetic 60000 25000 1000000 --epochs 3 \
    --set train.device=cuda --name speed-lightgcn-1m-gpu
keep docs/benchmarks/speed-lightgcn-1m-gpu.json

wanted quality && step "quality-$DATASET-gpu" "$QUALITY_LIMIT" "$PY" -m tokenrec.bench.quality --profile bench-cpu \
    --snapshot "$SNAPSHOT" --run-dir "$RUN" --skip gnn tokenizer --name "quality-$DATASET-gpu" \
    --set "source.dataset=$DATASET" --set train.device=cuda --set "llm.backbone=$MINILM" --set llm.samples_per_user=0 \
    --set "llm.max_epochs=$LLM_EPOCHS" --set llm.batch_size=64 --set llm.eval_batch_size=1024 \
    --set "eval.baselines=[mostpop,lightgcn,tokenrec,tokenrec_paper_scoring,tokenrec_id_only,tokenrec_unseen_prompt]"
keep "docs/benchmarks/quality-$DATASET-gpu.json" "$RUN/llm/history.json"
