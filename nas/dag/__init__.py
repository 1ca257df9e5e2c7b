"""The restricted-DAG dynamic network (seed 003; spec dag_mtl.md).

- :mod:`~nas.dag.graph` flow-restricted edges, the flow-based reduction (Algorithm 1), topology
  metrics, the relative performance Delta_T;
- :mod:`~nas.dag.network` the central network as registered Keras layers (task-major batching, gates,
  masks), pruned to what the tasks use;
- :mod:`~nas.dag.search` warm-up, search (squeeze loss) and fine-tuning on the engine;
- :mod:`~nas.dag.report` sub-network drawings, trace, topology table;
- :mod:`~nas.dag.command` ``run(DagConfig)`` and ``python -m nas.dag``.
"""

from .command import DagConfig, DagResult, compare, main, run
from .graph import edges, reduce_task, relative_performance, topology
from .network import DagSpec, build_network

__all__ = ["DagConfig", "DagResult", "DagSpec", "build_network", "compare", "edges", "main", "reduce_task",
           "relative_performance", "run", "topology"]
