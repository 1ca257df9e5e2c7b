"""Former place of :mod:`nas.common.blocks`: models saved before the move name this module, and
importing it registers their layers."""

from nas.common.blocks import *  # noqa: F401,F403
from nas.common.madds import measure_madds, takes_training  # noqa: F401
