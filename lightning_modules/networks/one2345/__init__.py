"""The One-2-3-45 reconstruction networks (SparseNeuS-style): the NeuS volume renderer."""
