"""LightningModules over plain-PyTorch networks (models arrive with the LRM and One-2-3-45 issues)."""
