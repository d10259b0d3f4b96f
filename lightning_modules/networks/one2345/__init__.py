"""The One-2-3-45 reconstruction networks (SparseNeuS-style), plain nn.Modules:

    features.py      FeatureFPN: source views → fused 2-D features
    cost_volume.py   CostVolume: voxels projected into the views → mean/variance over the views that see them,
                     as sparse (coords, feats) for a spconv 3-D CNN (not built yet: issue 4)
    renderer.py      NeuSRenderer: SDF + colour → NeuS volume rendering with a learned variance
"""
