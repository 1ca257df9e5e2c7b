"""Architecture search for multi-task networks, one package per method, each trained by the engine of
:mod:`icao_mtl.training` and evaluated with :mod:`icao_mtl.metrics`:

- :mod:`nas.depth` the paper's branch-depth NAS (seed 000): ``python -m nas.depth``;
- :mod:`nas.bmtas` branched multi-task architecture search (seed 004): ``python -m nas.bmtas``;
- :mod:`nas.common` what several methods use (searchable blocks, MAdds, the shared options, the
  method interface);
- :mod:`nas.compare` every method on the same data, budget, split and seeds: ``python -m nas.compare``.

A method package never imports another; each exposes ``run(config) -> MethodResult``
(:mod:`nas.common.method`). ``nas.search`` and ``nas.branching`` are the former names of the two
commands, kept for one release; ``nas.blocks`` and ``nas.supergraph`` let models saved before the
move load.
"""

import icao_mtl  # noqa: F401  (sets TensorFlow's defaults before a method imports it)
