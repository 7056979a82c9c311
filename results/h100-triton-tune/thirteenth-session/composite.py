"""The landed kernel's (1c3f163) Triton rows, cell by cell from the run whose tree ran that cell with its configuration,
against cuDNN and FA4: python composite.py results/h100-default-rows-v5.3 (its README's tables)."""
import json, math, sys
from collections import defaultdict
R = sys.argv[1]
def load(folder, backend=None):
    d = {}
    for l in open(f"{R}/{folder}/results.jsonl"):
        r = json.loads(l)
        if backend and r["backend"] != backend: continue
        d[(r["backend"], r["case"])] = r
    return d
def landed_paired(r):
    c = r.get("config") or ""
    if "-paired" not in c: return False
    if "N128-s3" in c: return False                      # D=64 stays step
    if r["head_dim"] == 128 and "N64-s2-paired" in c and "N128" not in c: return False  # SHORT stays step
    if (r["variant"] or "").find("-w") >= 0 or (r["variant"] or "").startswith("w"): return False  # windows: step
    return True
def composite(step_folder, paired_folder):
    step, paired = load(step_folder, "triton"), load(paired_folder, "triton")
    out = {}
    for k, r in step.items():
        p = paired.get(k)
        out[k[1]] = (p, "paired") if p and landed_paired(p) else (r, "step")
    return out
main = load(".")
comp = composite(".", "paired")
rep = composite("repeat/step", "repeat/paired")
rep_cudnn = load("repeat/step", "cudnn")
by = defaultdict(lambda: defaultdict(list))
rows = []
for case, (t, src) in sorted(comp.items()):
    if t["verdict"] != "ok": continue
    feat = (t["variant"] or "") not in ("", "fp16")
    v = t["variant"] or ""
    model_feature = v.startswith("w") or "-w" in v or any(x in v for x in ("cap", "sinks", "kvfp8"))
    wl = t["workload"] + (" (model features)" if model_feature else "")
    line = {"case": case, "workload": wl, "triton": t["median_us"], "schedule": src, "config": t.get("config")}
    for b in ("cudnn", "fa4"):
        o = main.get((b, case))
        if o and o["verdict"] == "ok":
            by[wl][b].append((o["median_us"] / t["median_us"], case))
            line[b] = o["median_us"]
        elif o:
            line[b] = o["verdict"]
    rt = rep.get(case)
    if rt and rt[0]["verdict"] == "ok":
        line["triton_repeat"] = rt[0]["median_us"]
        c = rep_cudnn.get(("cudnn", case))
        if c and c["verdict"] == "ok":
            by[wl]["cudnn (repeat)"].append((c["median_us"] / rt[0]["median_us"], case))
            line["cudnn_repeat"] = c["median_us"]
    rows.append(line)
print("| workload | other | cells | geomean | min | below 1 |")
print("| --- | --- | ---: | ---: | --- | ---: |")
for wl in sorted(by):
    for b, xs in by[wl].items():
        g = math.exp(sum(math.log(x) for x, _ in xs) / len(xs)); mn = min(xs)
        print(f"| {wl} | {b} | {len(xs)} | {g:.3f} | {mn[0]:.3f} `{mn[1]}` | {sum(x < 1 for x, _ in xs)} |")
print()
print("| cell | schedule | Triton | again | cuDNN | again | FA4 | cuDNN / Triton | FA4 / Triton |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
def f(x): return f"{x:.1f}" if isinstance(x, float) else (x or "-")
for l in rows:
    if l["workload"].startswith(("prefill", "mixed")) or (l.get("cudnn") and isinstance(l["cudnn"], float) and l["cudnn"] / l["triton"] < 1):
        cr = f"{l['cudnn'] / l['triton']:.2f}" if isinstance(l.get("cudnn"), float) else "-"
        fr = f"{l['fa4'] / l['triton']:.2f}" if isinstance(l.get("fa4"), float) else "-"
        print(f"| `{l['case']}` | {l['schedule'] if 'gluon' in (l['config'] or '') else 'Triton kernel'} | {f(l['triton'])} | {f(l.get('triton_repeat'))} | {f(l.get('cudnn'))} | {f(l.get('cudnn_repeat'))} | {f(l.get('fa4'))} | {cr} | {fr} |")
