#!/bin/bash
# BigGAN on CIFAR-10 at 32x32 within a CPU budget, and its class fidelity.
#
#   benchmarks/biggan_cifar10.sh DATA [OUT [BIGGAN FLAGS...]]
#
# DATA is a folder with train/ and test/, one subfolder per class (benchmarks/prepare_data.py writes
# it). Steps: (1) train the small classifier of benchmarks/cifar_classifier.py on train/, report its
# test accuracy (skipped when OUT/classifier.pt exists); (2) train biggan.py on train/ with the
# flags below, or with BIGGAN FLAGS when given (the res-32 architecture at --ch 16, batch 32, twice
# the authors' code-recipe rates: lr 2e-4 / 8e-4, 1 D step; a short EMA; bfloat16 autocast; 30
# minutes); (3) draw 1000 class-balanced samples from the EMA generator, untruncated and truncated
# at 1.5, 1.0 and 0.5, and report the share the classifier puts in their conditioning class and
# each class's variety against the real test images; (4) write the truncation sweep and a class
# interpolation. Set PYTHON to choose the interpreter, DATA_ROOT for the decoded-image cache.
set -euo pipefail
DATA=${1:?usage: benchmarks/biggan_cifar10.sh DATA [OUT [BIGGAN FLAGS...]]}
OUT=${2:-runs/biggan_cifar10}
shift $(( $# < 2 ? $# : 2 ))
FLAGS=("$@")
[ ${#FLAGS[@]} -gt 0 ] || FLAGS=(--ch 16 --batch-size 32 --lr-g 2e-4 --lr-d 8e-4 --d-steps 1 --ema-start 1000 --ema-decay 0.999 --minutes 30 --amp)
PY=${PYTHON:-python}
ROOT=${DATA_ROOT:-./data}
mkdir -p "$OUT"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

if [ -f "$OUT/classifier.pt" ]; then
    stamp "classifier: reusing $OUT/classifier.pt"
else
    stamp classifier
    t=$(date +%s)
    $PY benchmarks/cifar_classifier.py --data "$DATA" --data-root "$ROOT" --out "$OUT/classifier.pt"
    echo "classifier: $(( $(date +%s) - t )) s"
fi

stamp biggan training
t=$(date +%s)
$PY biggan.py --data "$DATA/train" --data-root "$ROOT" --out "$OUT/train" \
    --sample-every 500 --ckpt-every 500 "${FLAGS[@]}"
echo "biggan training: $(( $(date +%s) - t )) s"

for T in none 1.5 1.0 0.5; do
    stamp "samples, truncation $T"
    flag=(); [ "$T" != none ] && flag=(--truncation "$T")
    $PY biggan.py --generate 1000 --ckpt "$OUT/train/last.pt" --out "$OUT/generated_$T" "${flag[@]}"
    $PY benchmarks/cifar_classifier.py --ckpt "$OUT/classifier.pt" --eval "$OUT/generated_$T" --data "$DATA" --data-root "$ROOT"
done
stamp pictures
$PY biggan.py --truncation-sweep --ckpt "$OUT/train/last.pt" --out "$OUT"
$PY biggan.py --interpolate-class 1 7 --ckpt "$OUT/train/last.pt" --out "$OUT"
stamp done
