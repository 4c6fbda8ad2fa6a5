#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults.
#   1. a small synthetic conversation corpus (espeak-ng; generated once, then reused),
#   2. `dpm label` on an embedded local Ray with the packaged default model in mode dpm,
#   3. the table path and a short accuracy summary against the corpus's gold labels,
#      read back from the Parquet table with DuckDB as a warehouse would.
set -euo pipefail
out="${1:-demo_output}"
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/.venv/bin"
corpus="$out/corpus"
tables="$out/tables"
mkdir -p "$out"
out="$(cd "$out" && pwd)"; corpus="$out/corpus"; tables="$out/tables"

if [ ! -f "$corpus/manifest.parquet" ]; then
  "$bin/dpm" synth --out "$corpus" --conversations 6 --seed 7 \
    --min-utterances 12 --max-utterances 20 --no-progress
fi

run_id="demo-$(date -u +%Y%m%dT%H%M%SZ)"
set +e
"$bin/dpm" label --input "$corpus" --output "$tables" --mode dpm --run-id "$run_id" \
  progress_interval_s=10
code=$?
set -e
if [ "$code" -ne 0 ] && [ "$code" -ne 3 ]; then
  echo "demo: dpm label failed with exit code $code" >&2
  exit "$code"
fi

echo
echo "emotion table: $tables/emotions/   (errors: $tables/errors/, run records: $tables/_runs/$run_id/)"
"$bin/python" - "$tables" "$run_id" <<'EOF'
import sys

import duckdb

tables, run_id = sys.argv[1], sys.argv[2]
rows = duckdb.sql(
    f"""
    select gold_emotion as gold, count(*) as n,
           avg(case when emotion::varchar = gold_emotion then 1.0 else 0.0 end) as recall
    from read_parquet('{tables}/emotions/**/*.parquet', hive_partitioning = true)
    where run_id = '{run_id}' and gold_emotion is not null
    group by gold_emotion order by gold_emotion
    """
).fetchall()
if not rows:
    sys.exit("demo: no labeled utterances with gold labels")
total = sum(n for _, n, _ in rows)
wa = sum(n * r for _, n, r in rows) / total
ua = sum(r for _, _, r in rows) / len(rows)
majority = max(n for _, n, _ in rows) / total
print(f"accuracy vs gold over {total} utterances (mode dpm, run {run_id}):")
print(f"  WA (accuracy) {wa:.3f}   UA (mean recall) {ua:.3f}   majority-class baseline {majority:.3f}")
for gold, n, recall in rows:
    print(f"  {gold:<8} n={n:<4} recall {recall:.3f}")
EOF
exit "$code"
