#!/usr/bin/env bash
# make demo: export a small attention model with torch, convert it to C, and validate
# the generated C on the host and on emulated Raspberry Pi 4 (NEON) and K230 (RVV) boards.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=examples/out
mkdir -p "$OUT"

boards=host
for b in rpi4 k230; do
    if moa-edge boards --json "$OUT/boards.json" >/dev/null &&
       python -c "import json,sys; sys.exit(0 if next(x for x in json.load(open('$OUT/boards.json'))['boards'] if x['name']=='$b')['ready'] else 1)"; then
        boards="$boards,$b"
    else
        echo "demo: board $b is not ready on this machine (run make setup as root); skipping it" >&2
    fi
done

for opset in 23 18; do
    model="$OUT/attention_op$opset.onnx"
    echo "== torch.onnx.export (dynamo, opset $opset) =="
    python examples/attention_block/export_model.py --opset "$opset" -o "$model" 2>/dev/null
    echo "== moa-edge convert =="
    moa-edge convert "$model" -o "$OUT/attention_op$opset"
    echo "== moa-edge validate --board $boards =="
    moa-edge validate "$model" --board "$boards" --json "$OUT/validate_op$opset.json"
    echo
done
