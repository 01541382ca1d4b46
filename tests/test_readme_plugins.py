"""The README's plugin examples run as written and pass the conformance kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdistill.testing import check_optimizer, check_schedule

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(first_line: str) -> str:
    """The fenced code block of the README that starts with ``first_line``."""
    text = README.read_text(encoding="utf-8")
    start = text.index("```python\n" + first_line) + len("```python\n")
    return text[start:text.index("```", start)]


@pytest.fixture(scope="module")
def optim_example():
    namespace: dict = {}
    exec(compile(_block("# my_package/optim.py"), "README.md (my_package/optim.py)", "exec"), namespace)
    return namespace


def test_readme_optimizer_example_passes_the_kit(optim_example):
    check_optimizer(optim_example["Adamax"])


def test_readme_schedule_example_passes_the_kit(optim_example):
    check_schedule(optim_example["Step"], every=5)
    check_schedule(optim_example["Step"], gamma=0.25, every=3)


def test_readme_kernel_example_passes_the_kit():
    from kdistill.testing import check_kernel

    namespace: dict = {}
    exec(compile(_block("# my_package/kernels.py"), "README.md (my_package/kernels.py)", "exec"), namespace)
    check_kernel(namespace["MyKernel"], scale=2.0)
