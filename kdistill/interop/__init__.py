"""Interoperability: import other tools' distilled sets (KIP, RFAD, RCIG, plain npz) and
export kdistill sets (safetensors). See :mod:`kdistill.interop.importers` and
:mod:`kdistill.interop.exporters`."""

from kdistill.interop.exporters import export_safetensors
from kdistill.interop.importers import FORMATS, import_set
from kdistill.interop.readers import ForeignFormatError

__all__ = ["FORMATS", "ForeignFormatError", "export_safetensors", "import_set"]
