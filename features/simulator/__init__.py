"""The simulator: a population with hidden truth, and the history it produces (`pushplan simulate`)."""

from features.simulator.history import SimulationSummary, simulate
from features.simulator.population import Population

__all__ = ["Population", "SimulationSummary", "simulate"]
