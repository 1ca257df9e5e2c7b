"""Auto-VirtualNet (seed 002; Kim, Ahn and Oh, Neurocomputing 2021; spec virtualnet.md): nested
building blocks, a search agent and cost-adaptive models for every task from one set of weights.

- :mod:`~nas.virtualnet.blocks` costs of a configuration, block orders, nesting, the regulariser;
- :mod:`~nas.virtualnet.network` the modularised backbone with exact channel-group masking, the
  search agent and the sliced sub-networks, as registered Keras layers;
- :mod:`~nas.virtualnet.search` pretraining with block dropping and the alternating backbone / agent
  training on the engine;
- :mod:`~nas.virtualnet.report` the accuracy-cost curves, structures and trace;
- :mod:`~nas.virtualnet.command` ``run(VirtualNetConfig)`` and ``python -m nas.virtualnet``;
- :mod:`~nas.virtualnet.export` the standalone model of one (task, level).
"""

from .command import VirtualNetConfig, VirtualNetResult, compare, load, main, run, static_counts, task_cost
from .network import NestedResidual, NetSpec, SearchAgent, Shortcut, VirtualNet, build_sliced

__all__ = ["NestedResidual", "NetSpec", "SearchAgent", "Shortcut", "VirtualNet", "VirtualNetConfig",
           "VirtualNetResult", "build_sliced", "compare", "load", "main", "run", "static_counts", "task_cost"]
