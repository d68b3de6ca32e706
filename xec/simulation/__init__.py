"""Fast detector simulation: MEG II-format ROOT files from a parametric shower and light model.

- :mod:`xec.simulation.physics`: kinematics, shower spots, light transport, sensor response;
- :mod:`xec.simulation.generator`: reproducible block/chunk event loop and the ROOT writing;
- :mod:`xec.simulation.cli`: ``xec simulate``.
"""

from xec.simulation.generator import BLOCK_SIZE, SampleSpec, iter_blocks, simulate_block, write_sample
from xec.simulation.physics import PhysicsParams

__all__ = ["BLOCK_SIZE", "PhysicsParams", "SampleSpec", "iter_blocks", "simulate_block", "write_sample"]
