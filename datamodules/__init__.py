"""Lightning data modules: format-v1 shards (read through ``render_farm.shards``) and image files → batches.

* ``shard_datamodule``  ShardDataModule: shards → the LRM's view-sampled training and validation batches
* ``views``             view sampling (one input + N supervision views, resized, cropped, composited), ``finalize``
* ``one2345``           One2345DataModule: One-2-3-45's 40 source views (gt + rendered or Zero123-predicted
                        neighbours) and a gt target per object
* ``images``            ImageDataModule: image files → prediction batches for ``lift3d predict``
* ``foreground``        the object's mask of an image without a usable alpha (for ``images``)
"""
