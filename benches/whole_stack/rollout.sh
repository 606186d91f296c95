#!/usr/bin/env bash
# Watch a guarded rollout of `new-checkout` under load: starts the rollout through the admin API,
# drives GET /api/checkout with wrk (a distinct X-Forwarded-For per request, see xff.lua) and
# prints the rollout's state, stage, share and arms every 2 s until it completes or rolls back.
#
# Start a local cluster first, healthy or with a faulty new path, e.g.:
#   cargo run --example cluster                                   # healthy: completes
#   WELCOMEDLY_DEMO_FAULT=errors=0.05 cargo run --example cluster  # rolled back
#   WELCOMEDLY_DEMO_FAULT=latency_ms=50 cargo run --example cluster
# then, with the URL and admin token the launcher printed:
#   BASE=http://127.0.0.1:8080 TOKEN=<admin token> benches/whole_stack/rollout.sh
#
# Settings (environment):
#   BASE           the NGINX (or one instance's) URL                      (required)
#   TOKEN          WELCOMEDLY_ADMIN_TOKEN of the instances                  (required)
#   PLAN='{}'      the rollout plan (JSON); {} = 5 % -> 25 % -> 100 %, 60 s and 500 requests per arm each
#   DURATION=300s  the longest wrk runs
#   THREADS=2 CONNECTIONS=16 RATE: wrk -t / -c
set -euo pipefail

: "${BASE:?set BASE to the cluster URL (NGINX or an instance)}"
: "${TOKEN:?set TOKEN to the admin token}"
PLAN=${PLAN:-'{}'}
DURATION=${DURATION:-300s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
HERE=$(cd "$(dirname "$0")" && pwd)
STATUS_URL="$BASE/admin/rollouts/new-checkout"

echo "starting the rollout: $PLAN"
curl -fsS -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  --data "$PLAN" "$STATUS_URL" >/dev/null

wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$HERE/xff.lua" "$BASE/api/checkout" -- "$RANDOM" \
  >/tmp/rollout-wrk.txt 2>&1 &
WRK=$!
trap 'kill $WRK 2>/dev/null || true' EXIT

while kill -0 "$WRK" 2>/dev/null; do
  sleep 2
  status=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$STATUS_URL" || echo '{}')
  echo "$status" | python3 -c '
import json, sys
s = json.load(sys.stdin)
arms = s.get("arms") or {}
def arm(name):
    a = arms.get(name) or {}
    ms = a.get("latencyMs")
    return "%s %6d req %5.2f%% err p%g %s ms" % (name, a.get("requests", 0), 100 * a.get("errorRatio", 0),
        100 * a.get("latencyQuantile", 0.95), "-" if ms is None else "%.1f" % ms)
print("%-11s stage %s/%s %6.2f%%  %s | %s%s" % (s.get("state"), s.get("stage"), s.get("stages"),
      s.get("percent", 0), arm("control"), arm("treatment"),
      ("  frozen: " + s["frozenBecause"]) if s.get("frozenBecause") else ""))
'
  state=$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state",""))')
  case "$state" in
    completed|rolled_back|aborted)
      echo "$status" | python3 -c '
import json, sys
for d in json.load(sys.stdin)["decisions"]:
    ev = ", ".join("%s %s (stat %.2f / %.2f, %.2f%% vs %.2f%%)" % (e["guard"], e["evidence"]["verdict"],
         e["evidence"]["statistic"], e["evidence"]["threshold"], 100 * e["evidence"]["controlRate"],
         100 * e["evidence"]["treatmentRate"]) for e in d.get("evidence", []))
    print("%-9s stage %d -> %g%% by %s %s" % (d["action"], d["stage"], d["percent"], d["actor"], ev))
'
      break ;;
  esac
done
