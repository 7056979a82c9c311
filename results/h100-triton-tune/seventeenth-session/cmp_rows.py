"""Compare per-cell Triton/cuDNN times across result folders: python3 cmp.py DIR..."""
import sys, json, math
from collections import defaultdict
def rows(d):
    out = {}
    for line in open(f"{d}/results.jsonl"):
        r = json.loads(line)
        key = (r["case"] + (("|" + r["variant"]) if r.get("variant") else ""), r["backend"])
        out[key] = r
    return out
dirs = sys.argv[1:]
data = {d: rows(d) for d in dirs}
cases = sorted({k[0] for d in dirs for k in data[d] if k[1] == "triton" and data[d][k]["workload"] in ("prefill", "mixed")})
print("case".ljust(52), *[d.split("/")[-1][:10].rjust(10) for d in dirs], " cudnn(each)")
gm = defaultdict(list); bad = defaultdict(list)
for c in cases:
    t = []; cu = []
    for d in dirs:
        r = data[d].get((c, "triton")); q = data[d].get((c, "cudnn"))
        t.append(r["median_us"] if r and r["verdict"] == "ok" else float("nan"))
        cu.append(q["median_us"] if q and q["verdict"] == "ok" else float("nan"))
    print(c[:52].ljust(52), *[f"{x:10.1f}" for x in t], " ", " ".join(f"{x/y:.3f}" for x, y in zip(cu, t)))
    for d, x, y in zip(dirs, t, cu):
        if x == x and y == y:
            gm[d].append(math.log(y / x))
            if y / x < 1.0: bad[d].append((c, round(y / x, 3)))
for d in dirs:
    print(d, "cudnn/triton geomean %.3f min %.3f n %d" % (math.exp(sum(gm[d]) / len(gm[d])), math.exp(min(gm[d])), len(gm[d])), "below 1:", bad[d])
