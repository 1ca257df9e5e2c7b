"""Former place of :mod:`nas.bmtas.supergraph`: models saved before the move name this module, and
importing it registers their layers."""

from nas.bmtas.supergraph import MixedOp, Supergraph  # noqa: F401
