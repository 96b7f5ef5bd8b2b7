"""Compatibility alias: the SVGG toy lives in :mod:`prunewise.toy`."""
from ..toy import *  # noqa: F401,F403
