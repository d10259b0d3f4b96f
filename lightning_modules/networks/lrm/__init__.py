"""The LRM networks: encoder, camera-modulated triplane transformer, triplane NeRF renderer, the model, and the
typed option blocks of ``configs/model/lrm_*.yaml`` (``config``)."""
