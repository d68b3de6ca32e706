"""Classical (non-ML) reconstruction: the reference the ML must beat (see xec.baseline.reco)."""
