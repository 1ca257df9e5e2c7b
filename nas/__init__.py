"""Architecture search for multi-task networks: search spaces, controllers as keras-tuner oracles,
the search command and the search variants. Every method here trains with the engine of
:mod:`icao_mtl.training` and is evaluated with :mod:`icao_mtl.metrics`."""
