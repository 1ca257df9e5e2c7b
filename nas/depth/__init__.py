"""The paper's branch-depth NAS (seed 000, section 3.4.3; spec icao_paper.md).

- :mod:`~nas.depth.space` the space of branch depths per task group;
- :mod:`~nas.depth.controllers` RANDOM, REINFORCE and the reference code's controller as keras-tuner oracles;
- :mod:`~nas.depth.features` the frozen-backbone feature cache;
- :mod:`~nas.depth.heads` all branches of a child as one batched head;
- :mod:`~nas.depth.search` ``run(SearchConfig)`` and ``python -m nas.depth``.
"""

from .search import SearchConfig, SearchResult, compare, main, run_search, summarize, table2

run = run_search

__all__ = ["SearchConfig", "SearchResult", "compare", "main", "run", "run_search", "summarize", "table2"]
