"""``lift3d evaluate``: held-out reconstruction, scoring against ground truth, report.

* ``reconstruction``  the held-out objects of the shards, each object's batch, the checkpoint that reconstructs,
  renders the held-out cameras and extracts the mesh (``LRMReconstructor``, ``held_out_batch``, ``list_objects``)
* ``scoring``         one object's record: image metrics of the held-out views, geometry metrics against the ground
  truth (asset mesh or depth points), the report strip (``ObjectEvaluator``)
* ``report``          summaries, ``summary.md``, ``report.md``/``.html``, histograms, the W&B table
* ``cli``             the command: arguments, Fabric ranks, the loop over objects, the one gather (``main``)
"""
