"""The LRM networks: encoder, camera-modulated triplane transformer, triplane NeRF renderer, the model."""
