#!/usr/bin/env bash
# A trainer in bash + curl that takes part in a federation through BranchKey Gateway.
#
# Each round it fabricates weights (numpy, through python3: a random step away from the last
# aggregate) and makes one call: `curl -F file=@weights.npz /exchange` uploads them, waits for the
# first aggregation announced after the upload, and answers with that aggregation's file.
#
#   GATEWAY_URL     the gateway (default http://127.0.0.1:8000)
#   ROUNDS          rounds to take part in (default 3)
#   SAMPLES         this trainer's weighting, the number of samples it trained on (default 128)
#   WORK_DIR        where weights.npz and aggregated.npz are kept (default: a new temp folder)
#   WAIT_TIMEOUT_S  longest wait for one round's aggregation (default 600, capped by the
#                   gateway's GATEWAY_WAIT_TIMEOUT_S)
#   PYTHON          a Python with numpy (default python3)
set -euo pipefail

GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:8000}
GATEWAY_URL=${GATEWAY_URL%/}
# With GATEWAY_TOKEN set (always, for a gateway in a container), every request carries it.
auth=()
if [[ -n ${GATEWAY_TOKEN:-} ]]; then auth=(-H "Authorization: Bearer $GATEWAY_TOKEN"); fi
ROUNDS=${ROUNDS:-3}
SAMPLES=${SAMPLES:-128}
WAIT_TIMEOUT_S=${WAIT_TIMEOUT_S:-600}
PYTHON=${PYTHON:-python3}
WORK_DIR=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bk-bash-trainer.XXXXXX")}

weights=$WORK_DIR/weights.npz
aggregated=$WORK_DIR/aggregated.npz

fail() {
    echo "trainer: $*" >&2
    exit 1
}

# weights.npz: `weighting` plus layer_0 (16 x 8) and layer_1 (8), float32, one small random step
# from the last aggregate (or from zeros in the first round).
FABRICATE='
import os, sys
import numpy as np

out, base, samples = sys.argv[1], sys.argv[2], float(sys.argv[3])
if os.path.exists(base):
    with np.load(base) as agg:
        layers = [agg[f"layer_{i}"] for i in range(len(agg.files))]
else:
    layers = [np.zeros((16, 8), np.float32), np.zeros(8, np.float32)]
rng = np.random.default_rng()
layers = [(layer + rng.normal(0, 0.1, layer.shape)).astype(np.float32) for layer in layers]
np.savez(out, weighting=np.float64(samples), **{f"layer_{i}": a for i, a in enumerate(layers)})
'

fabricate() {
    "$PYTHON" -c "$FABRICATE" "$weights" "$aggregated" "$SAMPLES"
}

# One round in one call: upload weights.npz, get the round's aggregation into aggregated.npz.
# The answer's headers name both files: X-File-Id (the upload), X-Aggregation-Id, X-Event-Id.
exchange() {
    local headers=$WORK_DIR/headers next=$WORK_DIR/next.npz
    if ! curl "${auth[@]}" -sS --fail-with-body -D "$headers" -o "$next" \
        -F "file=@$weights" "$GATEWAY_URL/exchange?wait_timeout=$WAIT_TIMEOUT_S"; then
        # A problem (RFC 9457 JSON): a 504 aggregation-timeout means the upload was accepted.
        fail "exchange refused: $(cat "$next" 2>/dev/null || echo "no answer from $GATEWAY_URL")"
    fi
    file_id=$(header X-File-Id) aggregation_id=$(header X-Aggregation-Id) event_id=$(header X-Event-Id)
    mv "$next" "$aggregated"
}

header() { # the value of one response header of the last exchange
    grep -i "^$1:" "$WORK_DIR/headers" | tail -n 1 | sed 's/^[^:]*: *//' | tr -d '\r'
}

mkdir -p "$WORK_DIR"
rm -f "$aggregated"
echo "trainer on $GATEWAY_URL: $ROUNDS round(s), weighting $SAMPLES, files in $WORK_DIR"
for ((round = 1; round <= ROUNDS; round++)); do
    fabricate
    exchange
    echo "round $round/$ROUNDS: uploaded $file_id, aggregation $aggregation_id" \
        "(event $event_id), $(wc -c <"$aggregated") bytes in $aggregated"
done
