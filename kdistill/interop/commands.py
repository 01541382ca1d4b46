"""``kdistill import`` and ``kdistill export`` (registered on the CLI group by
:func:`add_interop_commands`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kdistill.errors import KdistillError


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(["kip", "rfad", "rcig", "npz"]),
              help="kip: KIP's released npz (NHWC); rfad: RFAD's best.npz (NCHW); rcig: RCIG's flax msgpack "
                   "checkpoint; npz: plain images/labels npz.")
@click.option("--dataset", required=True, help="Registered dataset the set was distilled from, e.g. cifar10.")
@click.option("--data-dir", help="Directory with the dataset's files (the preprocessing is refitted on them).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory to write (distilled.npz, config.toml, metrics.json).")
@click.option("--layout", type=click.Choice(["auto", "nhwc", "nchw"]), default="auto", show_default=True,
              help="Image axis order of an npz file (the other formats have a fixed one).")
@click.option("--source-preprocess", type=click.Choice(["auto", "none", "standardize", "zca", "zca-centered",
                                                         "layernorm-zca"]), default="auto", show_default=True,
              help="The space the stored images are in; auto: the format's own preprocessing for the dataset.")
@click.option("--preprocess", type=click.Choice(["auto", "standardize", "zca", "none"]), default="auto",
              show_default=True, help="kdistill preprocessing of the artifact; auto: zca for a whitened source, "
                                      "else standardize.")
@click.option("--zca-reg", type=float, default=0.1, show_default=True,
              help="The source's ZCA regularization (fraction of the mean eigenvalue).")
@click.option("--pixel-scale", type=click.Choice(["255", "1"]), default="255", show_default=True,
              help="Scale of raw-pixel images (--source-preprocess none).")
@click.option("--ridge", type=float, help="Relative ridge for evaluation (default: RFAD's jit, else kdistill's).")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config field for later evaluation, e.g. -s eval_kernel.name=convnet -s test_size=1000.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace a previous run in --out.")
def import_command(file, fmt, dataset, data_dir, out_dir, layout, source_preprocess, preprocess, zca_reg,
                   pixel_scale, ridge, sets, overwrite) -> None:
    """Import FILE, a distilled set made by another tool, as a kdistill run directory
    that `kdistill evaluate` (KRR or --nn), `baseline` and `report` accept.

    The foreign preprocessing is refitted on --dataset's training split, inverted, and
    the images re-expressed in kdistill's own preprocessing; the artifact records the
    format, the file's name and SHA-256 (metrics.json, "imported_from").
    """
    from kdistill.interop.importers import import_set
    from kdistill.io.rundir import RunDirectory
    from kdistill.io.safeio import write_text_atomic

    out = Path(out_dir)
    try:
        with RunDirectory(out, overwrite=overwrite, what="--out") as lock:
            art = import_set(file, fmt, dataset, data_dir, layout=layout, source_preprocess=source_preprocess,
                             preprocess=preprocess, zca_reg=zca_reg, pixel_scale=float(pixel_scale), ridge=ridge,
                             overrides=list(sets))
            lock.prepare(int(art.images.nbytes * 2 + 2**20 + sum(v.nbytes for v in art.transform.state().values())))
            from kdistill.core.config import DistillConfig

            art.save(out / "distilled.npz")
            write_text_atomic(out / "config.toml", DistillConfig.from_dict(art.config).to_toml())
            write_text_atomic(out / "metrics.json", json.dumps(art.metrics, indent=2))
    except (KdistillError, ImportError) as exc:
        _fail(exc)
    src = art.metrics["imported_from"]
    click.echo(f"imported {len(art.images)} images of {dataset} ({fmt}, source preprocessing "
               f"{src['source_preprocess']['name']} -> kdistill {src['kdistill_preprocess']}), "
               f"sha256 {src['sha256'][:12]}")
    click.echo(f"wrote {out}/  (next: kdistill evaluate {out})")


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["safetensors"]), default="safetensors", show_default=True)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True)
@click.option("--pixel-space", is_flag=True, default=False,
              help="Store images on the 0..255 pixel scale (the transform's inverse) instead of preprocessed.")
def export_command(run_dir, fmt, out_file, layout, pixel_space) -> None:
    """Export the distilled set of RUN_DIR (or a distilled.npz) to another format:
    safetensors with images, labels, class_ids and the transform's arrays."""
    from kdistill.interop.exporters import export_safetensors
    from kdistill.io.artifact import load

    path = Path(run_dir)
    if path.is_dir():
        path = path / "distilled.npz"
    try:
        art = load(path)
        out = export_safetensors(art, out_file, layout=layout, pixel_space=pixel_space)
    except (KdistillError, ImportError) as exc:
        _fail(exc)
    click.echo(f"wrote {out} ({len(art.images)} images, {layout.upper()}, "
               f"{'pixels' if pixel_space else art.transform.name + ' space'})")


def add_interop_commands(group: click.Group) -> None:
    """Register ``import`` and ``export`` on the CLI ``group``."""
    group.add_command(import_command)
    group.add_command(export_command)
