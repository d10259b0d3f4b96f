"""Plain ``nn.Module``s of the models; nothing here imports Lightning (``render_farm`` imports Zero123 from here).

* ``lrm/``      the LRM: DINO encoder, camera-modulated triplane transformer, triplane NeRF renderer, the model
* ``one2345/``  One-2-3-45's reconstruction networks (SparseNeuS-style): FPN, cost volume, sparse 3-D CNN, SDF and
                blending fields, NeuS renderer
* ``zero123/``  Zero123 / Zero123-XL on diffusers' building blocks: the views One-2-3-45 reconstructs from
* ``config``    typed option blocks (one dataclass per block of a model YAML); each model's ``config.py`` has its own
"""
