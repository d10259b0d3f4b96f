"""``lift3d evaluate``: held-out reconstruction, scoring against ground truth, report."""
