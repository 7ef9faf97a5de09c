#!/usr/bin/env bash
# Issue 21's GPU round: every row of its table, before and after, in one run of at most ~9 minutes.
#
# Here (no GPU), from the project root: `bash ../shared/device/prepare.sh` builds .gpu/ (the project's wheel,
# imageio-ffmpeg, the embedded model's weights, the 1280x720 Big Buck Bunny clip). In a git worktree its first
# line fails (.git is a file there): run `sed 's|^grep -qx .*|true|' ../shared/device/prepare.sh | bash` instead
# (.gpu/ is in .gitignore). Rebuild it after every code change: the round runs the wheel, not the tree.
#
# On the GPU machine, from the project root with .gpu carried along (run tool: timeout_s 570):
#     bash benchmarks/gpu_round.sh
# It writes $OUT/summary.txt (a table), $OUT/summary.jsonl (one JSON object per step) and $OUT/log.txt.
# Steps and rows: benchmarks/gpu_round.py. BUDGET_S (default 510) bounds the steps; extra arguments go to
# gpu_round.py (e.g. --only flow720-off-1,flow720-on-cold).
set -u
: "${OUT:?set OUT to the folder the results go to (the device tool sets it)}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
budget=${BUDGET_S:-510}
site=${SITE:-/tmp/dreamreel-site}
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/whl/*.whl \
    >>"$OUT/log.txt" 2>&1; then
  echo "gpu_round: installing .gpu/whl failed (run prepare.sh first); the end of $OUT/log.txt:"
  tail -5 "$OUT/log.txt"
  exit 1
fi
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PATH=$site/bin:$PATH
timeout --kill-after=10 $((budget + 30)) python3 -m dreamreel.benchmarks.gpu_round --out "$OUT" \
  --clip .gpu/clips/bigbuckbunny.mp4 --budget "$budget" "$@"
rc=$?
if [ $rc -ne 0 ]; then
  echo "gpu_round: the driver ended with exit code $rc; the summary so far:"
  cat "$OUT/summary.txt" 2>/dev/null
fi
exit $rc
