"""Summarises benchmark JSON lines (one measurement per line, as printed by the tapegrad
benchmark programs and the reference scripts; a leading "RESULT " is ignored) into a table of
ratios: for every (workload, shape, threads), the median over runs of each implementation's
median time, and tapegrad's time divided by the reference's (< 1: tapegrad is faster).

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
    for r in recs:
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


if __name__ == "__main__":
    main()
