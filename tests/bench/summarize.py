"""Summarises benchmark JSON lines (one measurement per line, as printed by the tapegrad
benchmark programs and the reference scripts; a leading "RESULT " is ignored) into a table of
ratios: for every (workload, shape, threads), the median over runs of each implementation's
median time, and tapegrad's time divided by the reference's (< 1: tapegrad is faster). When the
file also holds fp32 FMA peak measurements (fma_peak, run by scripts/bench.sh with the gemm
workload), a second table gives every GEMM shape's GFLOP/s as a fraction of that peak; with STREAM
triad measurements (stream_triad, run with the norms workload), a third gives every norms case's
GB/s of compulsory traffic as a fraction of that bandwidth.

  python3 summarize.py results.jsonl [more.jsonl ...]
"""
import collections
import json
import math
import statistics
import sys


def load(paths):
    recs = []
    for p in paths:
        for line in open(p):
            line = line.strip()
            if line.startswith("RESULT "):
                line = line[7:]
            if not line.startswith("{"):
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def main():
    recs = load(sys.argv[1:])
    times = collections.defaultdict(list)  # (workload, shape, threads, impl) -> [median_s per run]
    order = []
    peaks = collections.defaultdict(list)  # threads -> fp32 FMA peak GFLOP/s (AVX-512 and AVX2 kernels)
    streams = collections.defaultdict(list)  # threads -> DRAM STREAM triad GB/s, one per repeat
    for r in recs:
        if "machine" in r:
            print("machine: %s (%s family %s model %s), L1d %s, L2 %s, %s CPUs" % (
                r["machine"], r.get("vendor", "?"), r.get("cpu_family", "?"), r.get("model", "?"),
                r.get("l1d", "?"), r.get("l2", "?"), r.get("cpus", "?")))
            print()
            continue
        if r.get("bench") == "fma_peak":
            peaks[int(r["threads"])].append(float(r["gflops_median"]))
            continue
        if r.get("bench") == "stream":
            if r.get("op") == "triad" and r.get("level") == "DRAM":
                streams[int(r["threads"])].append(float(r["gbs_median"]))
            continue
        if "workload" not in r:
            continue
        key = (r["workload"], r["shape"], int(r["threads"]), r["impl"])
        if key not in times:
            order.append(key)
        times[key].append(float(r["median_s"]))
    rows = collections.OrderedDict()
    for (w, s, t, impl) in order:
        rows.setdefault((w, s, t), {})[impl] = statistics.median(times[(w, s, t, impl)])
    print("| workload | shape | threads | tapegrad ms | reference | reference ms | tapegrad/ref time | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    per_group = collections.defaultdict(list)
    for (w, s, t), impls in rows.items():
        if "tapegrad" not in impls:
            continue
        refs = [k for k in impls if k != "tapegrad"]
        ours = impls["tapegrad"]
        if not refs:
            print("| %s | %s | %d | %.3f | - | - | - | - |" % (w, s, t, ours * 1e3))
            continue
        for ref in refs:
            ratio = ours / impls[ref]
            per_group[(w, t, ref)].append(ratio)
            print("| %s | %s | %d | %.3f | %s | %.3f | %.3f | %.2fx |" % (w, s, t, ours * 1e3, ref, impls[ref] * 1e3, ratio, 1 / ratio))
    print()
    print("| workload | threads | reference | geometric-mean speedup | cases |")
    print("|---|---|---|---|---|")
    for (w, t, ref), ratios in per_group.items():
        g = math.exp(sum(math.log(1 / r) for r in ratios) / len(ratios))
        print("| %s | %d | %s | %.2fx | %d |" % (w, t, ref, g, len(ratios)))
    if peaks:
        gemm_efficiency(recs, rows, {t: max(v) for t, v in peaks.items()})
    if streams:
        norms_bandwidth(recs, rows, streams)


def rate_table(rows, workload, work, yardstick, ref, what, unit, per):
    """One row per case of `workload` with a known amount of work (work[shape], in units of 1e9
    `unit`): each implementation's rate from its median time, and that rate as a share of the
    yardstick measured in the same run (yardstick[threads])."""
    print()
    print("| %s | threads | tapegrad %s | %% of %s | %s %s | %% of %s |" % (what, unit, per, ref, unit, per))
    print("|---|---|---|---|---|---|")
    for (w, s, t), impls in rows.items():
        if w != workload or s not in work or t not in yardstick:
            continue
        cells = []
        for impl in ("tapegrad", ref):
            if impl in impls:
                rate = work[s] / impls[impl] / 1e9
                cells += ["%.1f" % rate, "%.0f%%" % (100 * rate / yardstick[t])]
            else:
                cells += ["-", "-"]
        print("| %s | %d | %s |" % (s, t, " | ".join(cells)))


def gemm_efficiency(recs, rows, peak):
    """GFLOP/s of every GEMM shape (from the median time) against the measured fp32 FMA peak."""
    flops = {}
    for r in recs:
        if r.get("workload") == "gemm" and "M" in r:
            flops[r["shape"]] = 2.0 * int(r["M"]) * int(r["N"]) * int(r["K"])
    print()
    print("fp32 FMA peak measured in this run: " +
          ", ".join("%.1f GFLOP/s at %d thread(s)" % (peak[t], t) for t in sorted(peak)))
    rate_table(rows, "gemm", flops, peak, "openblas", "gemm shape", "GFLOP/s", "peak")


def norms_bandwidth(recs, rows, streams):
    """GB/s of every norms case (compulsory bytes / median time) against the STREAM triad measured
    in the same run: the best of its repeats (the strictest yardstick) and their median."""
    nbytes = {}
    for r in recs:
        if r.get("workload") == "norms" and "bytes" in r:
            nbytes[r["shape"]] = float(r["bytes"])
    best = {t: max(v) for t, v in streams.items()}
    print()
    print("STREAM triad (DRAM) measured in this run: " +
          ", ".join("%.1f GB/s at %d thread(s) (best of %d; median %.1f)" %
                    (best[t], t, len(streams[t]), statistics.median(streams[t])) for t in sorted(best)))
    rate_table(rows, "norms", nbytes, best, "pytorch", "norms case", "GB/s", "STREAM")


if __name__ == "__main__":
    main()
