"""Render a run's report.html in headless Chromium and save a screenshot.

    python benchmarks/render_report.py RUN_DIR [--out shot.png] [--height 4000]

Exits non-zero if Chromium is missing, fails, or writes a blank image. Install on
Debian: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 4000, timeout: float = 120) -> Path:
    """Screenshot ``html`` (file URL) into ``out`` with headless Chromium.

    Raises:
        FileNotFoundError: no Chromium. RuntimeError: it failed or wrote a blank image.
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out.resolve()}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    if img.ndim != 3 or float(img[..., :3].std()) < 0.02:
        raise RuntimeError(f"the screenshot {out} is blank")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args()
    html = Path(args.run_dir) / "report.html"
    if not html.is_file():
        sys.exit(f"{html} does not exist; run `kdistill report {args.run_dir}` first")
    out = Path(args.out or Path(args.run_dir) / "report_screenshot.png")
    try:
        screenshot(html, out, args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
