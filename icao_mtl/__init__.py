"""icao-mtl: multi-task learning and architecture search for ICAO face-photo compliance.

Importing the package is cheap (no TensorFlow): the renderer and the data reader can run in worker
processes without loading TensorFlow.
"""

__version__ = "0.1.0"
