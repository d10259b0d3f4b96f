"""Render farm: assets → Blender (bpy 4.2) → shard format v1 (see docs/DESIGN.md)."""
