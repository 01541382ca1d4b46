#!/usr/bin/env bash
# The wheels a GPU device machine lacks for `pip install -e .` of kdistill, downloaded here
# (where pip reaches PyPI) into benchmarks/.wheels/ (git-ignored), for the device tool to
# carry (carry: ["benchmarks/.wheels"]); benchmarks/gpu_figures.sh installs from there
# offline.
#
#   bash benchmarks/gpu_wheels.sh
#
# The device machines' image (python3 3.12 with JAX 0.11 CUDA, torch 2.11 CUDA; see the
# device tool's KINDS.md package list) holds every dependency in pyproject.toml except
# array-api-compat and tomli-w; they are pure-Python wheels (py3-none-any). setuptools
# goes into benchmarks/.wheels/build/: the offline, isolated build of the editable install
# takes it from there (pip cannot fetch the build requirement `setuptools>=77` there).
# The versions are those of this project's tested environment.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=benchmarks/.wheels
rm -rf "$dest"
mkdir -p "$dest/build"
# --no-deps: each needs nothing that is not already there (both have no requirements)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$dest" \
  array-api-compat==1.16.0 tomli-w==1.2.0
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$dest/build" setuptools==84.2.1
ls -l "$dest" "$dest/build"
du -sh "$dest"
