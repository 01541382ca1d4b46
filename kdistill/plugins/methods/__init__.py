"""Built-in outer-loop methods, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.methods.kip import run_kip
from kdistill.plugins.methods.label_solve import run_label_solve


@hookimpl
def kdistill_register_methods(register):
    register("kip", run_kip, "Kernel Inducing Points: learn the support set through KRR (and RFAD with a "
                             "random kernel)")
    register("label-solve", run_label_solve, "Label Solve: closed-form labels for real support images")
