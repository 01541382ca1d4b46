"""Self-contained HTML report (and a markdown summary) of a run directory.

``build_report(run_dir)`` reads, from ``RUN_DIR``:

- ``distilled.npz`` (required): images, labels, config, metrics, per-step history;
- ``nn_<model>.json``: finite-network results (``kdistill evaluate --nn``);
- ``baselines/<kind>/distilled.npz`` and ``baselines/<kind>/nn_<model>.json``
  (``kdistill baseline``);

and writes ``RUN_DIR/report.html`` (every figure embedded as a base64 PNG, no
external resources: one file to mail or archive), ``RUN_DIR/report.md`` and the
figures as ``RUN_DIR/report_files/*.png`` (linked from the markdown).

An NN result stores the digest of the support set it was measured on; a result whose
digest differs from the set now beside it (a new run written into the directory) is
not shown: the report says so in a warning (page, markdown and a
:class:`ReportWarning`). Everything copied in from files (class names, config
strings, set and model names) is escaped: HTML-escaped in the page, backslash-escaped
in the markdown, and drawn literally (no mathtext) in figures.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import ArtifactError


class ReportWarning(UserWarning):
    """Something in the run directory was left out of the report (e.g. a stale NN result)."""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$])")


def md_escape(text: Any) -> str:
    """``text`` as literal inline markdown: the characters that open emphasis, code,
    links/images, HTML tags or entities, strikethrough, table cells and math
    (``\\ ` * _ [ ] < > | ~ & $``) backslash-escaped (CommonMark escapes), line breaks
    as spaces. Safe inside a line or table cell, not at the start of a line."""
    return _MD_SPECIAL.sub(r"\\\1", re.sub(r"[\r\n]+", " ", str(text)))


def md_code_block(text: str, lang: str = "") -> list[str]:
    """Lines of a fenced code block holding ``text`` verbatim: the fence is longer than
    any run of backticks inside, so the content cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text.rstrip("\n"), fence]


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_png(artifact, title: str) -> bytes:
    """The distilled images (raw pixel scale), one row per class, as PNG bytes."""
    import tempfile

    from kdistill.plotting import save_image_grid

    with tempfile.TemporaryDirectory() as tmp:
        path = save_image_grid(artifact.transform.inverse(artifact.images), artifact.class_ids,
                               Path(tmp) / "grid.png", class_names=artifact.dataset.get("class_names"),
                               title=title)
        return path.read_bytes()


def distill_curves_png(history: dict[str, list], split: str = "test") -> bytes | None:
    """Distillation loss per step and KRR accuracy at evaluation steps on ``split``
    (``"test"``, or ``"validation"`` for runs with a validation split), or None without
    history."""
    if not history.get("step"):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(history["step"], history["loss"], lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="KIP loss (target batch)", title="distillation loss")
    if history.get("eval_step"):
        axes[1].plot(history["eval_step"], 100 * np.asarray(history["eval_acc"]), "o-")
    axes[1].set(xlabel="step", title="KRR accuracy during distillation")
    axes[1].set_ylabel(f"KRR {split} accuracy %", parse_math=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _fig_png(fig)


def nn_curves_png(results: dict[str, dict[str, Any]], model: str) -> bytes | None:
    """Finite-network training loss and test-accuracy curves (seed 0 of each set)."""
    rows = {name: r for name, r in results.items() if r is not None}
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, r in rows.items():
        run = r["runs"][0]
        axes[0].plot(np.arange(1, len(run["loss"]) + 1), run["loss"], lw=0.8, label=name)
        if run.get("curve_step"):
            axes[1].plot(run["curve_step"], 100 * np.asarray(run["curve_acc"]), "o-", label=name, ms=3)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="train loss")
    axes[0].set_title(f"{model}: training loss (seed {rows[next(iter(rows))]['runs'][0]['seed']})", parse_math=False)
    axes[1].set(xlabel="step", ylabel="test accuracy %")
    axes[1].set_title(f"{model}: test accuracy (last point: full test set)", parse_math=False)
    for ax in axes:
        ax.grid(alpha=0.3)
        for text in ax.legend(fontsize=7).get_texts():  # set names are text, not TeX
            text.set_parse_math(False)
    return _fig_png(fig)


def check_classes(art, path: Path) -> None:
    """Refuse an artifact whose class ids or class names the report cannot show.

    Raises:
        ArtifactError: a class id outside ``0..C-1`` (``C`` = label columns), or
            ``dataset.class_names`` that is not a list of ``C`` strings.
    """
    num_classes = art.labels.shape[1]
    ids = np.asarray(art.class_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ArtifactError(f"{str(path)!r} has class id {bad} but its labels have {num_classes} classes "
                            f"(ids 0..{num_classes - 1}): the artifact is damaged; rewrite it "
                            "(`kdistill distill` / `kdistill baseline`)")
    names = art.dataset.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or not all(isinstance(n, str) for n in names)):
        got = f"{len(names)} entries" if isinstance(names, list) else type(names).__name__
        raise ArtifactError(f"{str(path)!r} has dataset.class_names of {got}; expected a list of "
                            f"{num_classes} strings (one per label column)")


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, as plain data.

    Returns:
        ``{"run_dir", "artifact", "sets": {name: {"artifact", "nn": {model: result},
        "stale": {model: result}}}, "models", "warnings"}``; ``sets`` holds
        ``distilled`` first, then each baseline found. ``nn`` holds the results measured
        on the set now in the directory; ``stale`` those whose stored support digest
        differs (measured on an earlier set), each also described in ``warnings``.
    Raises:
        ArtifactError: no readable ``distilled.npz`` in ``run_dir``; an unreadable,
            malformed or edited ``nn_*.json``; class ids or names the report cannot show.
    """
    from kdistill.io.artifact import load
    from kdistill.nn.train import read_result, support_digest

    run_dir = Path(run_dir)
    if not (run_dir / "distilled.npz").is_file():
        raise ArtifactError(f"{str(run_dir)!r} has no distilled.npz; pass a run directory written by "
                            "`kdistill distill` or `kdistill baseline`")
    sets: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def add(name: str, d: Path) -> None:
        art = load(d / "distilled.npz")
        check_classes(art, d / "distilled.npz")
        digest = support_digest(art.images, art.labels)
        nn, stale = {}, {}
        for p in sorted(d.glob("nn_*.json")):
            res = read_result(p)
            if res["support"]["digest"] == digest and res["support"]["n"] == len(art.images):
                nn[p.stem[3:]] = res
            else:
                stale[p.stem[3:]] = res
                notes.append(
                    f"{p} was measured on a different support set (digest {res['support']['digest']}, "
                    f"{res['support']['n']} examples) than {d / 'distilled.npz'} (digest {digest}, "
                    f"{len(art.images)} examples): its accuracy is not shown. Rerun "
                    f"`kdistill evaluate {d} --nn {p.stem[3:]}` to measure the current set.")
        sets[name] = {"artifact": art, "nn": nn, "stale": stale, "krr": krr_results(d) if name != "distilled" else []}

    add("distilled", run_dir)
    base = run_dir / "baselines"
    if base.is_dir():
        from kdistill.baselines import BASELINES

        order = {k: i for i, k in enumerate(BASELINES)}  # random, kmeans, herding, then others
        for d in sorted(base.iterdir(), key=lambda d: (order.get(d.name, len(order)), d.name)):
            if (d / "distilled.npz").is_file():
                add(d.name, d)
    models = sorted({m for s in sets.values() for m in (*s["nn"], *s["stale"])})
    return {"run_dir": run_dir, "artifact": sets["distilled"]["artifact"], "sets": sets, "models": models,
            "warnings": notes}


def _fmt_nn(r: dict[str, Any] | None, stale: bool = False) -> str:
    """``mean ± std (n=seeds, N test images)``; one seed: ``acc (1 seed, N test images)``."""
    if stale:
        return "stale result not shown (see warning)"
    if r is None:
        return "–"
    if r.get("diverged"):
        return "diverged (no accuracy)"
    seeds, images = len(r["test_acc"]), f"{r['n_test']} test images"
    if seeds == 1:
        return f"{100 * r['mean']:.2f} (1 seed, {images})"
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (n={seeds}, {images})"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe_method(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """What made a set, for people: ``RFAD (kip with the random-feature kernel rf-convnet)``
    for a KIP run whose kernel is a :class:`~kdistill.core.contracts.RandomKernel` (or,
    when the kernel is not installed here, named ``rf-*``), else the recorded method
    (``kip``, ``label-solve``, ``baseline:random``, ...)."""
    method = str(metrics.get("method", config.get("method", "?")))
    kernel = config.get("kernel")
    name = kernel.get("name") if isinstance(kernel, dict) else kernel
    if method != "kip" or not isinstance(name, str):
        return method
    try:
        from kdistill.core.contracts import RandomKernel
        from kdistill.core.registry import get_registry

        factory = get_registry().get("kernels", name).factory
        random = isinstance(factory, type) and issubclass(factory, RandomKernel)
    except Exception:  # a kernel this installation lacks: judge by its name
        random = name.startswith("rf-")
    return f"RFAD (kip with the random-feature kernel {name})" if random else method


def krr_results(d: Path) -> list[dict[str, Any]]:
    """The KRR results ``kdistill evaluate`` wrote beside the artifact in ``d``
    (``eval_<kernel>.json``, sealed), unreadable ones skipped with a
    :class:`ReportWarning`."""
    from kdistill.io.safeio import read_json_sealed

    out = []
    for p in sorted(d.glob("eval_*.json")):
        try:
            res = read_json_sealed(p, ArtifactError, what="KRR result")
        except ArtifactError as exc:
            warnings.warn(f"{p} is left out of the report: {exc}", ReportWarning, stacklevel=3)
            continue
        if _is_number(res.get("distilled_acc")) and isinstance(res.get("n_test"), int):
            out.append(res)
    return out


def _krr_cell(name: str, s: dict[str, Any], m0: dict[str, Any]) -> str:
    """The KRR column of one set: accuracy % and the number of test images. The
    distilled set: its run's final score. A baseline: the ``kdistill evaluate`` result
    under the distilled set's evaluation kernel (another kernel's result is shown with
    its name), or "–"."""
    if name == "distilled":
        acc, n_test, kernel = m0.get("distilled_acc"), m0.get("n_test"), None
    else:
        want = m0.get("eval_kernel")
        found = [r for r in s["krr"] if r.get("n_support") in (None, len(s["artifact"].images))]
        match = [r for r in found if r.get("eval_kernel") == want] or found
        if not match:
            return "–"
        r = match[0]
        acc, n_test = r["distilled_acc"], r["n_test"]
        kernel = None if r.get("eval_kernel") == want else (r.get("eval_kernel") or {}).get("name")
    if not _is_number(acc):
        return "–"
    where = f"{n_test} test images" if isinstance(n_test, int) else "test set"
    return f"{100 * acc:.2f} ({where}" + (f", kernel {kernel})" if kernel else ")")


def metrics_table(info: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per set (distilled, baselines), KRR and NN accuracy columns;
    every number says on how many test images it was taken. A baseline's KRR cell comes
    from its ``eval_<kernel>.json`` (``kdistill evaluate RUN/baselines/<kind>``)."""
    models = info["models"]
    header = ["set", "method", "support size", "KRR test acc %"] + [f"NN {m} test acc % (mean ± std)" for m in models]
    rows = []
    m0 = info["artifact"].metrics
    for name, s in info["sets"].items():
        art = s["artifact"]
        rows.append([name, describe_method(art.config, art.metrics), str(len(art.images)), _krr_cell(name, s, m0)]
                    + [_fmt_nn(s["nn"].get(m), m in s["stale"]) for m in models])
    return header, rows


def _curve_caption(cfg: dict[str, Any], metrics: dict[str, Any], history: dict[str, list]) -> str:
    """The caption of the distillation curves, naming the split and its size."""
    if metrics.get("eval_split") == "validation":
        where = f"the validation split ({metrics.get('valid_size', '?')} training images held out)"
    elif _is_number(cfg.get("eval_test_size")):
        where = f"the first {cfg['eval_test_size']} test images"
    else:
        where = "the test set"
    return f"distillation loss per step and KRR accuracy during distillation on {where}"


def build_report(run_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` into ``run_dir``.

    NN results measured on another support set than the one now in the directory
    (stored digest differs) are left out of the table, with a warning at the top of
    both pages and a :class:`ReportWarning` per file.

    Returns:
        ``{"html": path, "markdown": path, "warnings": [message, ...]}``.
    Raises:
        ArtifactError: no or unreadable artifact; a malformed, edited or unreadable
            NN result file; class ids outside the artifact's classes.
    """
    from kdistill.version import __version__
    from kdistill.io.safeio import atomic_write, write_text_atomic

    info = collect(run_dir)
    for w in info["warnings"]:
        warnings.warn(w, ReportWarning, stacklevel=2)
    run_dir = info["run_dir"]
    art = info["artifact"]
    cfg = art.config
    method = describe_method(cfg, art.metrics)
    short = "RFAD" if method.startswith("RFAD") else cfg.get("method")
    title = title or f"kdistill report: {cfg.get('dataset')} {method} ipc={cfg.get('ipc')}"
    figs: dict[str, bytes] = {"grid": grid_png(art, f"{cfg.get('dataset')} {short} ipc={cfg.get('ipc')}")}
    png = distill_curves_png(art.history, art.metrics.get("eval_split", "test"))
    if png:
        figs["distill_curves"] = png
    for m in info["models"]:
        png = nn_curves_png({n: s["nn"].get(m) for n, s in info["sets"].items()}, m)
        if png:
            figs[f"nn_{m}_curves"] = png
    files = run_dir / "report_files"
    files.mkdir(exist_ok=True)
    for name, data in figs.items():
        atomic_write(files / f"{name}.png", lambda fh, data=data: fh.write(data))

    header, rows = metrics_table(info)
    protocols = {m: next((s["nn"][m] for s in info["sets"].values() if m in s["nn"]), None) for m in info["models"]}
    mismatched = [
        f"{n}/{m}" for n, s in info["sets"].items() for m, r in s["nn"].items()
        if protocols[m] is not None and r["protocol_id"] != protocols[m]["protocol_id"]
    ]
    sha = hashlib.sha256((run_dir / "distilled.npz").read_bytes()).hexdigest()
    try:
        from kdistill.core.config import DistillConfig

        config_text = DistillConfig.from_dict(cfg).to_toml()
    except Exception:  # an older or foreign config: show it as JSON
        config_text = json.dumps(cfg, indent=2)
    provenance = {
        "artifact": str(run_dir / "distilled.npz"),
        "artifact_sha256": sha,
        "written_by_kdistill": art.version,
        "report_by_kdistill": __version__,
        "seed": art.seed,
        "dataset": art.dataset,
        "report_generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    machines = {f"{n}/{m}": r["machine"] for n, s in info["sets"].items() for m, r in s["nn"].items()}
    m0, baselines = art.metrics, [n for n in info["sets"] if n != "distilled"]
    n_test = f" on {m0['n_test']} test images" if isinstance(m0.get("n_test"), int) else ""
    notes = [
        "NN accuracies are on the full test set after the last step; mean ± population std over the protocol's "
        "seeds (one seed: no std)." if info["models"] else "",
        "Baselines are built in the distilled set's own preprocessed space with centered one-hot labels and "
        "evaluated under exactly the protocol shown (same protocol id)." if baselines and info["models"] else "",
        "A baseline's KRR accuracy is the `kdistill evaluate RUN_DIR/baselines/<kind>` result; "
        "run it where the column shows –." if any(r[3] == "–" for r in rows[1:]) else "",
        f"KRR accuracy of a random real subset{' (another draw than the `random` baseline)' if 'random' in baselines else ''} "
        f"recorded at distillation{n_test}: {100 * m0['random_acc']:.2f}%." if _is_number(m0.get("random_acc")) else "",
    ]
    curve_caption = _curve_caption(cfg, m0, art.history)
    if mismatched:
        notes.append("WARNING: results under different protocols: " + ", ".join(mismatched))
    notes = [n for n in notes if n]

    # ---- HTML
    e = html.escape

    def img(name: str, alt: str) -> str:
        if name not in figs:
            return f"<p><em>{e(alt)}: not available</em></p>"
        b64 = base64.b64encode(figs[name]).decode()
        return f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{b64}"><figcaption>{e(alt)}</figcaption></figure>'

    table = "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"
    table += "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    prot_html = "".join(
        f"<h3>{e(m)} (id {e(p['protocol_id'])})</h3><p>{e(p['protocol_text'])}</p>"
        f"<pre>{e(json.dumps(p['protocol'], indent=2))}</pre>"
        for m, p in protocols.items() if p
    )
    # sections without data are left out
    curves = [img(n, alt) for n, alt in [("distill_curves", curve_caption)] + [
        (f"nn_{m}_curves", f"{m}: finite-network training loss and test accuracy over steps") for m in info["models"]]
        if n in figs]
    curves_html = ("<h2>Curves</h2>\n" + "\n".join(curves)) if curves else ""
    prot_html = f"<h2>Finite-network protocols</h2>\n{prot_html}" if prot_html else ""
    machines_html = f"<h3>Machines of the NN results</h3>\n<pre>{e(json.dumps(machines, indent=2))}</pre>" if machines else ""
    notes_html = f"<ul>{''.join(f'<li>{e(n)}</li>' for n in notes)}</ul>" if notes else ""
    metrics_json = json.dumps(art.metrics, indent=2, default=str)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
th{{background:#eef}}td:first-child,td:nth-child(2){{text-align:left}}
pre{{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}}
img{{max-width:100%}}figure{{margin:0.5em 0}}figcaption{{font-size:12px;color:#555}}
.warning{{background:#fff3cd;border:1px solid #e0a800;padding:6px 10px}}
</style></head><body>
<h1>{e(title)}</h1>
{''.join(f'<p class="warning"><strong>Warning:</strong> {e(w)}</p>' for w in info['warnings'])}
<h2>Metrics</h2>
{table}
{notes_html}
<h2>Distilled images</h2>
{img('grid', 'distilled support set (raw pixel scale, one row per class)')}
{curves_html}
{prot_html}
<h2>Run config</h2>
<pre>{e(config_text)}</pre>
<h2>Distillation metrics</h2>
<pre>{e(metrics_json)}</pre>
<h2>Provenance</h2>
<pre>{e(json.dumps(provenance, indent=2, default=str))}</pre>
{machines_html}
</body></html>
"""
    html_path = write_text_atomic(run_dir / "report.html", page)

    # ---- markdown: everything copied in is escaped (md_escape) or fenced (md_code_block)
    md = [f"# {md_escape(title)}", ""]
    md += [f"> **Warning:** {md_escape(w)}" + "\n" for w in info["warnings"]]
    md += ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    md += [""] + [f"- {md_escape(n)}" for n in notes] + [""]
    for m, p in protocols.items():
        if p:
            md.append(f"- protocol {md_escape(m)}: {md_escape(p['protocol_text'])}")
    md += ["", *(f"![{md_escape(name)}](report_files/{urllib.parse.quote(name)}.png)" for name in figs), "",
           "## Config", "", *md_code_block(config_text, "toml"), "",
           "## Provenance", "", *md_code_block(json.dumps(provenance, indent=2, default=str), "json"), ""]
    md_path = write_text_atomic(run_dir / "report.md", "\n".join(md))
    return {"html": html_path, "markdown": md_path, "warnings": list(info["warnings"])}
