"""Inpainter vs the classical dead-sensor recoveries, on artificially hidden live sensors
(`xec inpainting`): stratified seeded hiding (``masking``), streaming scores (``evaluate``),
the command (``cli``). And the reconstruction with dead sensors (`xec deadsweep`): readout
boards and dead-sensor masks (``boards``), the dead-fraction sweep (``deadsweep``), its command
(``deadsweep_cli``)."""
