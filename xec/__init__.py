"""xec: machine-learning reconstruction for the MEG II liquid-xenon gamma detector."""

__version__ = "0.1.0"
