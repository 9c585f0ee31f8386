#!/usr/bin/env bash
# The quick-start demo: the sample campaign through the built-in simulator, over loopback HTTP.
# Usage: sample_data/demo.sh [path/to/sms-blaster]
set -euo pipefail

bin=${1:-sms-blaster}
here=$(cd "$(dirname "$0")" && pwd)
out=.demo
mkdir -p "$out"
rm -f "$out/url"

# A provider that answers like the Vonage SMS API, 40-80 ms per request, throttling above 30/s.
"$bin" mock-provider --port 0 --latency-ms 40 --jitter-ms 40 --rate 30 \
    --port-file "$out/url" 2>"$out/simulator.log" &
simulator=$!
trap 'kill "$simulator" 2>/dev/null || true; wait "$simulator" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    [ -s "$out/url" ] && break
    sleep 0.1
done
url=$(cat "$out/url")
echo "simulator: $url"

# A fresh journal each time, so the demo always sends (a re-run would resume and skip all).
rm -f "$out"/campaign.journal*
status=0
VONAGE_API_KEY=demo-key VONAGE_API_SECRET=demo-secret "$bin" send "$here/campaign.csv" \
    --base-url "$url" --from SMSBlaster --default-region GB --rate 25 \
    --journal "$out/campaign.journal" \
    --text 'Hi {name}, your code for {city} is {code}. Reply STOP to opt out.' \
    >"$out/results.jsonl" || status=$?

echo
echo "First records (all $(wc -l <"$out/results.jsonl") are in $out/results.jsonl):"
head -n 3 "$out/results.jsonl"
echo "Exit code $status (1: some rows failed, here the sample's invalid numbers)."
echo
echo "The journal, summarised (sms-blaster report $out/campaign.journal):"
"$bin" report "$out/campaign.journal" | sed -n '/^rows/,/^latency/p'
"$bin" report "$out/campaign.journal" --html "$out/campaign.html"
echo
echo "The same with charts, one page to open in a browser: $out/campaign.html"
[ "$status" -le 1 ]
