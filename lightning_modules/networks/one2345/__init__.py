"""The One-2-3-45 reconstruction networks (SparseNeuS-style), plain nn.Modules:

    features.py      FeatureFPN: source views → fused 2-D features
    cost_volume.py   CostVolume: voxels projected into the views → mean/variance over the views that see them,
                     as sparse (coords, feats) for a spconv 3-D CNN
    sparse_cnn.py    SparseGeometryNet: the cost volume → a geometry volume (spconv sparse 3-D CNN, ≤ 2-level
                     U-shape) on the same voxels; to_dense → (B, F, R, R, R) for trilinear sampling
    spconv_compat.py ensure_cpu_backward: without CUDA, spconv's stream getter returns 0 so CPU backward works
    fields.py        SDFNetwork (PE + geometry feature → SDF, geometric init, weight norm, Softplus β=100) and
                     BlendingColourNetwork (IBRNet-style softmax blend of the source views' colours)
    renderer.py      NeuSRenderer: SDF + colour → NeuS volume rendering with a learned variance
    model.py         One2345: the blocks assembled (posed views → cost volume → geometry volume → SDF + colour)
    config.py        the typed option blocks of ``configs/model/one2345_*.yaml`` (one dataclass per block)
"""
