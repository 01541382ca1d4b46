"""Finite-network evaluation of distilled sets (PyTorch).

- :mod:`kdistill.nn.models`: the ConvNet of the KIP/RFAD papers and an MLP;
- :mod:`kdistill.nn.protocol`: :class:`NNProtocol`, the declared, versioned training
  and evaluation protocol stored with every result;
- :mod:`kdistill.nn.train`: deterministic training and test evaluation.
"""

from kdistill.nn.protocol import NNProtocol

__all__ = ["NNProtocol"]
