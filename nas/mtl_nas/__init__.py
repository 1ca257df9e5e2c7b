"""MTL-NAS (seed 001; Gao et al., CVPR 2020; spec mtl_nas.md): searched NDDR feature fusion between
task networks.

- :mod:`~nas.mtl_nas.edges` the edge table (j <= i, same block, i - j < limit), gate modes, the
  temperature and MinEntropy schedules;
- :mod:`~nas.mtl_nas.network` the NDDR fusion op, the supernet (one branch per unit, E logits) and
  the final network with the kept edges only, as registered Keras layers;
- :mod:`~nas.mtl_nas.search` pretraining, the alternating search and the optional retraining on the
  engine;
- :mod:`~nas.mtl_nas.report` the edges (JSON, drawing) and the trace;
- :mod:`~nas.mtl_nas.command` ``run(MtlNasConfig)`` and ``python -m nas.mtl_nas``.
"""

from .command import MtlNasConfig, MtlNasResult, compare, main, make_units, run
from .edges import Edge, connectivity, edge_table, entropy_loss, temperature
from .network import NddrFusion, NetSpec, Supernet, build_net, transplant

__all__ = ["Edge", "MtlNasConfig", "MtlNasResult", "NddrFusion", "NetSpec", "Supernet", "build_net", "compare",
           "connectivity", "edge_table", "entropy_loss", "main", "make_units", "run", "temperature", "transplant"]
