"""Plain nn.Modules of the models (no Lightning imports here)."""
