#!/usr/bin/env bash
# A trainer in bash + curl that takes part in a federation through BranchKey Gateway.
#
# Each round it fabricates weights (numpy, through python3: a random step away from the last
# aggregate), uploads them with `curl -F`, waits for the round's aggregation on the gateway's event
# stream (`curl -N /events`, resuming with Last-Event-ID if the stream drops) and downloads it.
#
#   GATEWAY_URL     the gateway (default http://127.0.0.1:8000)
#   ROUNDS          rounds to take part in (default 3)
#   SAMPLES         this trainer's weighting, the number of samples it trained on (default 128)
#   WORK_DIR        where weights.npz and aggregated.npz are kept (default: a new temp folder)
#   WAIT_TIMEOUT_S  longest wait for one round's aggregation (default 600)
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
last_event_id=0 # the newest event seen: a reconnect asks for what came after it
aggregation_id=""

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

upload() { # prints the new file's id
    local response
    response=$(curl "${auth[@]}" -sS --fail-with-body -F "file=@$weights" "$GATEWAY_URL/upload") ||
        fail "upload refused: ${response:-no answer from $GATEWAY_URL}"
    [[ $response =~ \"file_id\":\ ?\"([^\"]+)\" ]] || fail "unexpected upload answer: $response"
    echo "${BASH_REMATCH[1]}"
}

start_after_latest() { # ignore aggregations the gateway announced before this trainer started
    local latest
    if latest=$(curl "${auth[@]}" -sf "$GATEWAY_URL/aggregations/latest") && [[ $latest =~ \"id\":\ ?([0-9]+) ]]; then
        last_event_id=${BASH_REMATCH[1]}
    fi
}

# Follow GET /events until an `aggregation` event after $last_event_id arrives; sets aggregation_id.
# A dropped stream (gateway restart, network) is reopened with Last-Event-ID, so no event is missed.
wait_for_aggregation() {
    local deadline=$((SECONDS + WAIT_TIMEOUT_S)) retry_ms=1000
    local sse curl_pid line field value event data id
    while ((SECONDS < deadline)); do
        exec {sse}< <(exec curl "${auth[@]}" -sN --max-time "$((deadline - SECONDS))" \
            -H 'Accept: text/event-stream' -H "Last-Event-ID: $last_event_id" "$GATEWAY_URL/events")
        curl_pid=$!
        event="" data="" id=""
        while IFS= read -r -u "$sse" line; do
            line=${line%$'\r'}
            if [[ -z $line ]]; then # a blank line ends an event
                [[ -n $id ]] && last_event_id=$id
                if [[ $event == gap ]]; then
                    echo "trainer: announcements may have been missed upstream ($data)" >&2
                elif [[ $event == aggregation && $data =~ \"aggregation_id\":\ ?\"([^\"]+)\" ]]; then
                    aggregation_id=${BASH_REMATCH[1]}
                    kill "$curl_pid" 2>/dev/null || true
                    exec {sse}<&-
                    return 0
                fi
                event="" data="" id=""
                continue
            fi
            [[ $line == :* ]] && continue # a comment: the keep-alive
            field=${line%%:*} value=${line#*:} value=${value# }
            case $field in
            id) id=$value ;;
            event) event=$value ;;
            data) data=${data:+$data$'\n'}$value ;;
            retry) [[ $value =~ ^[0-9]+$ ]] && retry_ms=$value ;;
            esac
        done
        exec {sse}<&-
        wait "$curl_pid" 2>/dev/null || true
        ((SECONDS < deadline)) || break
        echo "trainer: event stream ended; reconnecting after event $last_event_id" >&2
        sleep "$((retry_ms / 1000)).$(printf '%03d' $((retry_ms % 1000)))"
    done
    fail "no aggregation within $WAIT_TIMEOUT_S s"
}

download() {
    curl "${auth[@]}" -sS --fail-with-body -o "$aggregated" "$GATEWAY_URL/aggregations/$aggregation_id" ||
        fail "download of $aggregation_id failed: $(cat "$aggregated" 2>/dev/null)"
}

mkdir -p "$WORK_DIR"
rm -f "$aggregated"
start_after_latest
echo "trainer on $GATEWAY_URL: $ROUNDS round(s), weighting $SAMPLES, files in $WORK_DIR"
for ((round = 1; round <= ROUNDS; round++)); do
    fabricate
    file_id=$(upload)
    wait_for_aggregation
    download
    echo "round $round/$ROUNDS: uploaded $file_id, aggregation $aggregation_id" \
        "(event $last_event_id), $(wc -c <"$aggregated") bytes in $aggregated"
done
