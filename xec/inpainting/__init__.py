"""Inpainter vs the classical dead-sensor recoveries, on artificially hidden live sensors
(`xec inpainting`): stratified seeded hiding (``masking``), streaming scores (``evaluate``),
the command (``cli``)."""
