"""Walk README.md top to bottom and run its code blocks as written.

Conventions (also stated in the README's "Tests" section):

- Every fenced ```` ```python ```` and ```` ```bash ```` block is run, in order, in a
  scratch directory ``TMP/repo`` that links ``configs``, ``benchmarks`` and ``examples``
  of this repository and sits beside a link ``TMP/shared`` to ``../shared``, so the
  README's relative paths (``../shared/data/mnist``, ``configs/...``) resolve as they do
  from the repository root, and files the blocks write (``runs/``, ``*.npz``) land in
  the scratch directory. Python blocks run in-process, each in a fresh namespace; bash
  blocks run with ``bash -e`` and this interpreter's ``bin`` first on ``PATH``.
- An HTML comment on the line(s) right before a block controls it:
  ``<!-- test: skip (REASON) -->`` does not run it (the reason is listed);
  ``<!-- test: needs MOD1 MOD2 -->`` skips it when a module is not importable;
  ``<!-- test: expect "TEXT" -->`` checks that the block's output contains TEXT, where
  each percentage in TEXT (``98.61%``) matches any printed percentage within
  :data:`PERCENT_TOLERANCE` points: float32 runs on another CPU's BLAS may move a
  prediction or two of the 360 digits test images.
- A block naming ``../shared/data/NAME`` is skipped, naming the missing path, when that
  path does not exist.
- Other languages (``toml``, plain fences) are documentation, not run. Blocks meant to
  run are written to be cheap; the whole walk takes a few CPU-minutes at most.

At the end the test prints what it ran and what it skipped, and why (``pytest -s`` or
the captured output of a failure shows it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*test:\s*(.*?)\s*-->")
DATA_PATH = re.compile(r"\.\./shared/data/[\w.\-/]+")


def blocks(text: str) -> list[dict]:
    """Every ``python``/``bash`` fence: language, code, line, directives just before it."""
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1)
        if lang not in ("python", "bash"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        directives = []
        for prev in reversed(text[: m.start()].rstrip("\n").split("\n")):
            found = DIRECTIVE.fullmatch(prev.strip())
            if not found:
                break
            directives.insert(0, found.group(1))
        out.append({"lang": lang, "code": m.group(2), "line": line, "directives": directives})
    return out


def skip_reason(block: dict, shared: Path) -> str | None:
    for d in block["directives"]:
        if d.startswith("skip"):
            return d[4:].strip(" ()") or "marked skip"
        if d.startswith("needs "):
            missing = [mod for mod in d[6:].split() if importlib.util.find_spec(mod) is None]
            if missing:
                return f"module(s) not installed: {', '.join(missing)}"
    missing = sorted({p for p in DATA_PATH.findall(block["code"]) if not (shared.parent / "repo" / p).exists()})
    if missing:
        return f"data not present: {', '.join(missing)}"
    return None


#: How far (percentage points) a printed accuracy may be from the README's figure: two of
#: the 360 digits test images (0.56 points), for float32 runs on other CPUs.
PERCENT_TOLERANCE = 0.6


def contains(output: str, text: str) -> bool:
    """``text`` occurs in ``output``, each ``N.NN%`` of it matching a printed percentage
    within :data:`PERCENT_TOLERANCE` points and the rest literally."""
    parts = re.split(r"(\d+(?:\.\d+)?)%", text)
    pattern = "".join(re.escape(part) if i % 2 == 0 else r"(\d+(?:\.\d+)?)%" for i, part in enumerate(parts))
    wanted = [float(v) for v in parts[1::2]]
    return any(all(abs(float(got) - want) <= PERCENT_TOLERANCE for got, want in zip(m.groups(), wanted))
               for m in re.finditer(pattern, output))


def expected(block: dict) -> list[str]:
    return [m.group(1) for d in block["directives"] for m in re.finditer(r'expect\s+"([^"]*)"', d)]


def test_readme_blocks_follow_the_conventions():
    found = blocks(README.read_text(encoding="utf-8"))
    assert len(found) >= 10 and {b["lang"] for b in found} == {"python", "bash"}
    for b in found:
        for d in b["directives"]:
            assert re.match(r"(skip \(.+\)|needs \S+|expect \".*\")", d), f"README line {b['line']}: bad directive {d!r}"


def test_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("configs", "benchmarks", "examples"):
        (root / name).symlink_to(REPO / name)
    shared = tmp_path / "shared"
    if (REPO.parent / "shared").exists():
        shared.symlink_to(REPO.parent / "shared")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    report, failures = [], []
    for b in blocks(README.read_text(encoding="utf-8")):
        where = f"README.md:{b['line']} ({b['lang']})"
        reason = skip_reason(b, shared)
        if reason:
            report.append(f"skipped {where}: {reason}")
            continue
        start = time.perf_counter()
        if b["lang"] == "python":
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(compile(b["code"], where, "exec"), {"__name__": "__readme__"})
                ok, output = True, buf.getvalue()
            except Exception as exc:  # report every failing block, not only the first
                ok, output = False, f"{buf.getvalue()}{type(exc).__name__}: {exc}"
        else:
            proc = subprocess.run(["bash", "-e", "-c", b["code"]], capture_output=True, text=True, timeout=600)
            ok, output = proc.returncode == 0, proc.stdout + "\n--- stderr (tail) ---\n" + proc.stderr[-1500:]
        for text in expected(b):
            if not contains(output, text):
                ok, output = False, f"{output}\n(expected the output to contain {text!r})"
        report.append(f"ran {where} in {time.perf_counter() - start:.1f} s: {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{where}:\n{b['code']}\n--- output ---\n{output[-3000:]}")
    with capsys.disabled():
        print("\nREADME walk:\n  " + "\n  ".join(report))
    assert not failures, "README blocks failed:\n\n" + "\n\n".join(failures)
    assert any(r.startswith("ran") for r in report)
