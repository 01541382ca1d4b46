"""Public numerical helpers that kernel and solver plugins share (built-in and third-party):
:mod:`kdistill.ops.arccos` (the ReLU layer map of NNGP/NTK recursions) and
:mod:`kdistill.ops.linalg` (checked Cholesky factor and solve)."""
