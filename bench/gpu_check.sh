#!/usr/bin/env bash
# GPU checks of the GRIT detector stage in one go, under 8 minutes on one GPU (step timeouts add up to 470 s):
#   1. environment: GPU, torch, transformers, whether torchvision is there (it decides the image processor);
#   2. on CUDA, float32: the one grouped forward per image gives each caption the boxes its own forward gives
#      (tiny OWLv2; the CPU test tests/test_grit_passes.py checks the same);
#   3. bench/grit_detector.py with a full-size random-weight OWLv2 (owlv2-base-patch16 size, 960 px) and a full-size
#      Grounding DINO (Swin-T + BERT-base), float16: images/s of the stage against forward only (pre-made tensors,
#      the GPU's own limit), the plain processor+forward loop, and the per-caption stage (5 forwards per image);
#   4. the OWLv2 stage again on the multi-process DirectRunner: decode and resize in 8 worker processes while one
#      model (shared across them) runs, i.e. preprocessing off the GPU's critical path.
# Usage: bench/gpu_check.sh [OUTDIR]   (PYTHON=... to pick the interpreter; output also goes to OUTDIR/gpu_check.log;
#        DEVICE=cpu SKIP_BENCH=1 runs steps 1-2 on a machine without a GPU, to check the script itself)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export DEVICE=${DEVICE:-cuda}
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

link=$(mktemp -d)  # import this checkout as `groundforge`, whatever is installed
ln -s "$PWD" "$link/groundforge"
export PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export TRANSFORMERS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
status=0

step "environment"
nvidia-smi -L || true
"$PY" - <<'PY' || status=1
import importlib.util, platform
import torch, transformers
import groundforge
print("groundforge from", groundforge.__file__)
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("torchvision", "installed: fast image processors" if importlib.util.find_spec("torchvision")
      else "missing: PIL/numpy image processors")
PY

step "grouped forward = per-caption forwards, $DEVICE float32 (tiny OWLv2)"
timeout 60 "$PY" - <<'PY' || status=1
import os
import tempfile
from pathlib import Path

import pytest
from helpers import jpeg_bytes, make_owlv2
from groundforge.pipeline.builders.grit.ground import caption_query_groups
from groundforge.pipeline.handlers.detector import LoadedDetector, image_inputs, image_processor_for
from groundforge.transforms.grounding import detections_from_output, detector_queries, fan_out, image_queries
from groundforge.transforms.images import decode_image

chunk_texts = [["Two dogs", "a man", "a park"], ["A man", "two dogs", "the grass"], ["two dogs", "a person"],
               ["A person", "his dogs"], ["The dogs", "a man"]]
with tempfile.TemporaryDirectory() as tmp:
    owl = str(make_owlv2(Path(tmp)))
    image = decode_image(jpeg_bytes(96, 64)).convert("RGB")
    model = LoadedDetector(owl, device=os.environ["DEVICE"], dtype="float32")
    queries = image_queries(chunk_texts)
    processor, _ = image_processor_for(owl, False, True)
    [grouped] = model.detect_tensors([image_inputs(processor, image)], [(64, 96)], [queries.texts],
                                     [caption_query_groups(queries)])
    for c, texts in enumerate(chunk_texts):
        q = detector_queries(texts)
        [single] = model.detect([image], [q.texts])
        want = detections_from_output(*single, q)
        got = fan_out([(label, box, score) for box, score, label in zip(*grouped[c])], queries)[c]
        assert [d.chunk for d in got] == [d.chunk for d in want], c
        assert [v for d in got for v in d.box] == pytest.approx([v for d in want for v in d.box], abs=1e-3)
        assert [d.score for d in got] == pytest.approx([d.score for d in want], abs=1e-4)
print("ok: 5 captions, one forward, each caption's detections equal its own forward's")
PY

if [ -n "${SKIP_BENCH:-}" ]; then step "benches skipped, status $status"; exit $status; fi

step "bench: full-size OWLv2, float16"
timeout 200 "$PY" bench/grit_detector.py --full --images 64 --batch-size 16 --dtype float16 --repeat 1 \
  --device "$DEVICE" 2>&1 | grep -v -e "Loading weights" -e "Writing model" || status=1

step "bench: full-size Grounding DINO, float16"
timeout 120 "$PY" bench/grit_detector.py --detector dino --full --images 32 --batch-size 8 --dtype float16 --repeat 1 \
  --device "$DEVICE" 2>&1 | grep -v -e "Loading weights" -e "Writing model" || status=1

step "bench: full-size OWLv2, float16, multi-process DirectRunner (preprocessing in 8 processes, one shared model)"
timeout 90 "$PY" bench/grit_detector.py --full --images 128 --batch-size 16 --dtype float16 --repeat 1 \
  --skip-per-caption --device "$DEVICE" \
  --runner-args "--direct_running_mode=multi_processing --direct_num_workers=8" \
  2>&1 | grep -v -e "Loading weights" -e "Writing model" || status=1

step "done, status $status"
exit $status
