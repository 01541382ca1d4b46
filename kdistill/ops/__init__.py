"""Public numerical helpers that kernel and solver plugins share (built-in and third-party):
:mod:`kdistill.ops.arccos` (the ReLU layer map of NNGP/NTK recursions),
:mod:`kdistill.ops.linalg` (checked Cholesky factor and solve) and :mod:`kdistill.ops.convnet`
(the ConvNet layer spec the exact and random-feature kernels, the nt adapter and the
finite network are all built from)."""
