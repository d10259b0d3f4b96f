"""Geometry of lift3d, with no Lightning: numpy and torch functions that the render farm, the datamodules and the
models share.

- ``cameras``: the camera convention (OpenCV ``c2w``, ``K`` in pixels, pixel centres at +0.5), building a camera
  from (elevation, azimuth, radius, FOV) (``spherical_cameras``), numpy projection, Zero123's relative camera.
- ``rays``: the torch side of that convention: projection (``project``), camera rays, LRM's canonical cameras.
- ``rigs``: named camera rigs of the render farm and turntables, and One-2-3-45's 40-view layout.
- ``elevation``: One-2-3-45's elevation estimation of an input view from its four neighbours.
- ``image``: pixel grids that go with cameras: the one resampling rule (``resize``), image and turntable writing.
- ``raster``: a torch software rasterizer for meshes and turntable rendering.
- ``mesh``: dense field queries, marching cubes, mesh export and surface metrics; ``normalization``: fitting
  objects into [-1, 1]³.
"""
