"""Camera conventions, rigs and normalisation: numpy-only, no Lightning (see ``geometry.cameras``)."""
