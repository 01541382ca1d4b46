"""Reproduction table: our KRR and finite-network accuracies next to the published ones.

    python benchmarks/reproduce.py                       # every config in benchmarks/configs
    python benchmarks/reproduce.py --only mnist_kip_fc1_ipc10 --budget 3600
    python benchmarks/reproduce.py --reuse mnist_kip_fc1_ipc10=/work/exp/m10_torch

For each ``benchmarks/configs/*.toml`` (a distill config plus a ``[reproduce]`` table
with the published figures), in ``--runs ROOT/<name>/``:

1. distill, unless the run directory already holds ``distilled.npz`` (or ``--reuse``
   names one, which is copied in); configs whose ``estimated_seconds`` exceed what is
   left of ``--budget`` are not run and appear in the table as "not run (budget)";
2. train finite networks (``--nn convnet,fc``, protocol below) on the set and, with
   ``--baselines``, on a random class-balanced real subset, k-means centroids and
   herding of the same size, under the same protocol; a stored ``nn_<model>.json``
   with the same protocol id is reused;
3. write ``--table`` (markdown, default ``benchmarks/results/reproduction.md``) and
   a JSON twin: one row per config with our numbers, the published ones, the gap,
   seconds and machine; plus the exact command that made it.

A reused artifact whose config differs from the TOML is flagged in the row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kdistill  # noqa: E402
from kdistill.core.config import DistillConfig  # noqa: E402
from kdistill.io.safeio import write_text_atomic  # noqa: E402


def load_config(path: Path) -> tuple[DistillConfig, dict]:
    data = tomllib.loads(path.read_text())
    meta = data.pop("reproduce", {})
    meta.setdefault("name", path.stem)
    return DistillConfig.from_dict(data), meta


def config_diff(stored: dict, wanted: dict) -> list[str]:
    ignore = {"eval_every", "checkpoint_every", "eval_test_size", "backend", "data_dir", "dtype", "nonfinite_retries"}
    out = []
    for k in sorted(set(stored) | set(wanted)):
        if k in ignore:
            continue
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            a = {kk: v for kk, v in a.items()}
            b = {kk: v for kk, v in b.items()}
            sub = sorted(kk for kk in set(a) | set(b) if a.get(kk) != b.get(kk) and b.get(kk) is not None)
            out += [f"{k}.{kk}={a.get(kk)!r} (config: {b.get(kk)!r})" for kk in sub]
        elif a != b:
            out.append(f"{k}={a!r} (config: {b!r})")
    return out


def nn_result(run_dir: Path, model: str, protocol, log) -> dict:
    from kdistill.nn.train import evaluate_nn, read_result

    target = run_dir / f"nn_{model}.json"
    if target.is_file():
        old = read_result(target)
        if old["protocol_id"] == protocol.protocol_id:
            log(f"  reuse {target} ({100 * old['mean']:.2f} ± {100 * old['std']:.2f})")
            return old
    art = kdistill.load(run_dir / "distilled.npz")
    res = evaluate_nn(art, protocol)
    res["artifact"] = str(run_dir / "distilled.npz")
    write_text_atomic(target, json.dumps(res, indent=1))
    log(f"  {model} on {run_dir.name}: {100 * res['mean']:.2f} ± {100 * res['std']:.2f} ({res['seconds']:.0f} s)")
    return res


def fmt(x, pct=True):
    if x is None:
        return "–"
    return f"{100 * x:.2f}" if pct else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(ROOT / "benchmarks" / "configs"))
    ap.add_argument("--only", action="append", default=[], help="config name(s) to run (default: all)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "reproduce"), help="root of the run directories")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR",
                    help="take the artifact of config NAME from DIR instead of distilling")
    ap.add_argument("--budget", type=float, default=3600.0, help="seconds for new distillations (estimated)")
    ap.add_argument("--nn", default="convnet,fc", help="finite networks to train ('' = none)")
    ap.add_argument("-p", "--nn-set", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol field for every model (-p steps=500) or one model (-p convnet.width=64)")
    ap.add_argument("--nn-for", default="", metavar="NAMES",
                    help="comma-separated config names that get NN evaluations and baselines (default: all)")
    ap.add_argument("--baselines", action="store_true", help="also evaluate random/kmeans/herding baselines")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for small networks on a shared 2-core machine)")
    ap.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "reproduction.md"))
    args = ap.parse_args()

    from kdistill.baselines import baselines_for
    from kdistill.nn.protocol import NNProtocol
    from kdistill.nn.train import machine_info

    import torch

    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    reuse = dict(r.split("=", 1) for r in args.reuse)
    models = [m for m in args.nn.split(",") if m]
    def overrides_for(model: str) -> list[str]:
        out = []
        for item in args.nn_set:
            key = item.split("=", 1)[0]
            if "." not in key:
                out.append(item)
            elif key.split(".", 1)[0] == model:
                out.append(item.split(".", 1)[1])
        return out

    protocols = {m: NNProtocol.default(m).with_overrides(overrides_for(m)) for m in models}
    machine = machine_info()
    machine_text = f"{machine['cpu']}, {machine['cpu_count']} cores (shared), torch {machine['torch']} CPU"
    budget = args.budget
    rows = []
    for path in sorted(Path(args.configs).glob("*.toml")):
        cfg, meta = load_config(path)
        name = meta["name"]
        if args.only and name not in args.only:
            continue
        run_dir = Path(args.runs) / name
        row = {"name": name, "label": meta.get("label", name), "dataset": cfg.dataset, "ipc": cfg.ipc,
               "method": cfg.method, "config": str(path.relative_to(ROOT)), "meta": meta, "notes": [], "nn": {},
               "baselines": {}}
        log(f"== {name}")
        if name in reuse and not (run_dir / "distilled.npz").is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            for f in ("distilled.npz", "config.toml", "metrics.json", "grid.png"):
                if (Path(reuse[name]) / f).is_file():
                    shutil.copy2(Path(reuse[name]) / f, run_dir / f)
            row["notes"].append(f"artifact reused from {reuse[name]}")
        if not (run_dir / "distilled.npz").is_file():
            est = float(meta.get("estimated_seconds", 0))
            if est > budget:
                row["status"] = f"not run: estimated {est:.0f} s > budget left {budget:.0f} s"
                log(f"  {row['status']}")
                rows.append(row)
                continue
            t0 = time.perf_counter()
            res = kdistill.distill(cfg)
            run_dir.mkdir(parents=True, exist_ok=True)
            res.save(run_dir / "distilled.npz")
            write_text_atomic(run_dir / "config.toml", cfg.to_toml())
            write_text_atomic(run_dir / "metrics.json", json.dumps(res.metrics, indent=2))
            budget -= time.perf_counter() - t0
        art = kdistill.load(run_dir / "distilled.npz")
        diff = config_diff(art.config, cfg.to_dict())
        if diff:
            row["notes"].append("artifact config differs: " + "; ".join(diff))
        m = art.metrics
        row.update(status="ok", krr=m.get("distilled_acc"), krr_random=m.get("random_acc"),
                   distill_seconds=m.get("total_seconds"), distill_machine=m.get("machine", "this machine (2 CPU cores)"))
        nn_for = [n for n in args.nn_for.split(",") if n]
        if nn_for and name not in nn_for:
            row["notes"].append("NN not evaluated in this run (time budget)")
            rows.append(row)
            continue
        for model, protocol in protocols.items():
            row["nn"][model] = nn_result(run_dir, model, protocol, log)
        if args.baselines and models:
            bdir = run_dir / "baselines"
            missing = [k for k in ("random", "kmeans", "herding") if not (bdir / k / "distilled.npz").is_file()]
            if missing:
                for k, ds in baselines_for(art, missing).items():
                    ds.save(bdir / k / "distilled.npz")
            for k in ("random", "kmeans", "herding"):
                row["baselines"][k] = {model: nn_result(bdir / k, model, p, log) for model, p in protocols.items()}
        rows.append(row)

    # ---- table
    cmd = "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT))] + sys.argv[1:])
    lines = [
        "# Reproduction table", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `{cmd}` on {machine_text}.", "",
        "Accuracy % on the full official test set. KRR = the set scored by kernel ridge regression with "
        "its FC1 NTK. NN = finite networks trained on the set, mean ± std over seeds, under the protocols "
        "below (ours are small CPU networks; the published NN figures used a width-1024 ConvNet on a GPU "
        "and, for KIP, sets distilled with the ConvNet kernel, so they are not like-for-like). "
        "Gap = ours − published. \"–\" = no figure.", "",
    ]
    for model, p in protocols.items():
        lines.append(f"- NN protocol `{model}`: {p.describe()}")
    lines += ["", "| config | KRR ours | KRR published | KRR gap | " + " | ".join(
        f"NN {m} ours" for m in models) + " | NN published (KIP→NN, ConvNet kernel) | random subset NN ours (convnet) "
        "| random subset NN published | distill s | NN s | status / notes |",
        "|" + "---|" * (10 + len(models))]
    for r in rows:
        meta = r["meta"]
        pk = meta.get("published_krr")
        krr = r.get("krr")
        gap = f"{100 * krr - pk:+.2f}" if (krr is not None and pk is not None) else "–"
        nn_cells = [f"{100 * r['nn'][m]['mean']:.2f} ± {100 * r['nn'][m]['std']:.2f}" if m in r["nn"] else "–"
                    for m in models]
        rnd = r["baselines"].get("random", {}).get("convnet")
        nn_s = sum(x["seconds"] for x in r["nn"].values()) if r["nn"] else None
        lines.append(
            f"| {r['label']} | {fmt(krr)} | {pk if pk is not None else '–'} | {gap} | " + " | ".join(nn_cells)
            + f" | {meta.get('published_nn', '–')} | "
            + (f"{100 * rnd['mean']:.2f} ± {100 * rnd['std']:.2f}" if rnd else "–")
            + f" | {meta.get('published_random_nn', '–')} | {fmt(r.get('distill_seconds'), False)} | "
            + f"{fmt(nn_s, False)} | {r.get('status', '')}{'; ' if r['notes'] else ''}{'; '.join(r['notes'])} |"
        )
    if any(r["baselines"] for r in rows):
        lines += ["", "## Baselines under the same protocol (NN test accuracy %, mean ± std)", "",
                  "| config | model | distilled | random | k-means | herding |", "|---|---|---|---|---|---|"]
        for r in rows:
            if not r["baselines"]:
                continue
            for m in models:
                cells = [r["nn"][m]] + [r["baselines"][k][m] for k in ("random", "kmeans", "herding")]
                lines.append(f"| {r['label']} | {m} | " + " | ".join(
                    f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" for c in cells) + " |")
    variants = []
    for r in rows:
        run_dir = Path(args.runs) / r["name"]
        for f in sorted(run_dir.glob("nn_*-*.json")):
            from kdistill.nn.train import read_result

            v = read_result(f)
            variants.append(f"| {r['label']} | {f.stem[3:]} | {100 * v['mean']:.2f} ± {100 * v['std']:.2f} | "
                            f"{v['protocol_text']} |")
    if variants:
        lines += ["", "## Protocol variants found in the run directories (distilled set only)", "",
                  "| config | variant | NN test acc % | protocol |", "|---|---|---|---|", *variants]
    lines += ["", f"Machine of every row: {machine_text}; distillation seconds are those recorded in the "
              "artifact (same kind of machine unless noted)."]
    table = Path(args.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(table, "\n".join(lines) + "\n")
    slim = [{k: v for k, v in r.items() if k not in ("nn", "baselines")} | {
        "nn": {m: {k: x[k] for k in ("mean", "std", "test_acc", "protocol_id", "seconds")} for m, x in r["nn"].items()},
        "baselines": {b: {m: {k: x[k] for k in ("mean", "std", "test_acc", "protocol_id", "seconds")}
                          for m, x in v.items()} for b, v in r["baselines"].items()}} for r in rows]
    write_text_atomic(table.with_suffix(".json"), json.dumps(
        {"command": cmd, "machine": machine, "protocols": {m: p.to_dict() for m, p in protocols.items()},
         "rows": slim}, indent=1, default=str))
    log(f"wrote {table}")


if __name__ == "__main__":
    main()
