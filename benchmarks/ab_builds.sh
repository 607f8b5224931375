#!/usr/bin/env bash
# A / B timing of two builds of the package in one call (one GPU lease): each tree is a checkout with its extension
# already built in place (`python setup.py build_ext --inplace`, or a prebuilt library copied in, RESULTS.md
# "Device calls without a device build"). The benchmark runs in separate processes, alternating A, B, A, B, ..., so
# that drift of the machine lands on both sides; each run's table goes to OUT_DIR/<label>-<rep>.txt.
#   bash benchmarks/ab_builds.sh TREE_A TREE_B [REPS] [-- benchmark arguments]
#   e.g. bash benchmarks/ab_builds.sh . ../branch 2 -- --providers cuda --modes fwd --dtypes bf16
# Prints, per row of the benchmark, A's and B's times (ms) of every rep and B / A of their medians.
set -uo pipefail
a=$(cd "$1" && pwd) b=$(cd "$2" && pwd)
shift 2
reps=2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then reps=$1; shift; fi
[ "${1:-}" = "--" ] && shift
bench=${BENCH:-bench_hstu_attention}
out=${OUT_DIR:-${OUT:-bench_out}/ab}
mkdir -p "$out"
for rep in $(seq 1 "$reps"); do
  for side in A B; do
    tree=$a; [ $side = B ] && tree=$b
    (cd "$tree" && PYTHONPATH="$tree" python -m "benchmarks.ops.$bench" --out "$out/$side-$rep" "$@") \
      > "$out/$side-$rep.txt" 2>&1 || echo "$side rep $rep: rc=$? (see $out/$side-$rep.txt)"
  done
done
python - "$out" "$reps" <<'EOF'
import re, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
rows = {}  # row label -> {"A": [ms...], "B": [ms...]}
for side in "AB":
    for rep in range(1, reps + 1):
        for line in open(f"{out}/{side}-{rep}.txt"):  # table rows: shape (5 fields), dtype, mode, provider, ms, ...
            f = line.split()
            if line.startswith("B=") and len(f) > 8 and re.fullmatch(r"[0-9.]+", f[8]):
                rows.setdefault(" ".join(f[:8]), {"A": [], "B": []})[side].append(float(f[8]))
print(f"{'row':72s} {'A ms':>24s} {'B ms':>24s}  B/A")
for label, t in rows.items():
    ratio = statistics.median(t["B"]) / statistics.median(t["A"]) if t["A"] and t["B"] else float("nan")
    fmt = lambda xs: " ".join(f"{x:.4f}" for x in xs)
    print(f"{label:72s} {fmt(t['A']):>24s} {fmt(t['B']):>24s}  {ratio:.3f}")
EOF
