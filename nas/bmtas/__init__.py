"""BMTAS: branched multi-task architecture search (seed 004; spec branching_bmtas.md).

- :mod:`~nas.bmtas.partitions` groupings of the routing units and the exact resource-aware loss;
- :mod:`~nas.bmtas.supergraph` the K-copy layer and the supergraph model;
- :mod:`~nas.bmtas.search` the warm-up and search phases on the engine, and the trace;
- :mod:`~nas.bmtas.builder` the branched network, weight transfer, learning-rate groups;
- :mod:`~nas.bmtas.report` trace, tree and Pareto figures;
- :mod:`~nas.bmtas.command` ``run(BranchingConfig)`` and ``python -m nas.bmtas``.
"""

from .builder import branch_name, build_branched, lr_groups, structure, transplant
from .command import BranchingConfig, BranchingResult, compare, main, run
from .report import pareto_table, plot_pareto, plot_trace, plot_tree
from .search import TraceWriter, make_units, resource_cost, search_groups, search_phases
from .supergraph import MixedOp, Supergraph

__all__ = ["BranchingConfig", "BranchingResult", "MixedOp", "Supergraph", "TraceWriter", "branch_name",
           "build_branched", "compare", "lr_groups", "main", "make_units", "pareto_table", "plot_pareto", "plot_trace",
           "plot_tree", "resource_cost", "run", "search_groups", "search_phases", "structure", "transplant"]
