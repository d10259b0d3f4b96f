"""Render farm: objects in → shard format v1 out (docs/DESIGN.md), the command ``lift3d-render``.

* ``shards/``      the shard format: constants and key rule, writing, reading (every producer and reader imports it)
* ``cli``          ``lift3d-render objaverse | procedural | mvimgnet | zero123 | index``; ``tasks``: a process's
                   slice of the work
* ``sources``      where the objects come from (a local directory, the objaverse API); ``synthetic``: generated assets
* ``procedural``   LRM-Zero-style procedural objects: (seed, index) → recipe → GLB (``lift3d-render procedural``)
* ``farm``         a render task: assets → Blender worker processes (``worker``, ``blender_scene``: pip bpy 4.2, Cycles)
                   → crash-safe shards, with the settings of ``config``
* ``mvimgnet``     MVImgNet videos (COLMAP models) → shards, no Blender
* ``zero123``      One-2-3-45's prediction pass: shards → shards with Zero123's predicted neighbour views (the model
                   is ``lightning_modules.networks.zero123``)
"""
