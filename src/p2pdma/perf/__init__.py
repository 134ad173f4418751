"""The fabric throughput model: link rates, TLP efficiency, contention (pure, no state)."""

from p2pdma.fabric.paths import HOST, Direction, Hop, LinkId, Route, Segment, segments
from p2pdma.perf.model import Leg, Platform, Prediction, Resource, Transfer, predict
from p2pdma.perf.rates import GENERATIONS, TlpParams, link_bytes_per_s

__all__ = [
    "GENERATIONS", "HOST", "Direction", "Hop", "Leg", "LinkId", "Platform", "Prediction",
    "Resource", "Route", "Segment", "TlpParams", "Transfer", "link_bytes_per_s", "predict",
    "segments",
]
