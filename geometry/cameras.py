"""The camera convention of lift3d — the one home for it.

World frame
    Right-handed, +Z up: Blender's world after import (the glTF importer's +Y-up → +Z-up turn comes first).
    Objects are centred and scaled into [-1, 1]^3 (longest side 2); see ``geometry.normalization``.

Camera frame: OpenCV
    x right, y down, z forward (the camera looks along its +z axis).
    ``c2w`` (4×4) maps camera coordinates to world coordinates; ``w2c`` is its inverse. Matrices are never
    called ``pose``.

Intrinsics
    ``K`` (3×3) is in pixels of the stored image; pixel (u, v) covers [u, u+1) × [v, v+1), so pixel centres sit
    at integer + 0.5. A camera point (x, y, z) projects to ((fx·x + s·y)/z + cx, fy·y/z + cy), s = K[0, 1] the
    skew (0 for every camera lift3d makes; honoured wherever a point is projected or a pixel unprojected).

Depth
    z-depth along the camera's +z axis (not the ray length).

Blender / OpenGL cameras (x right, y up, z backward) are converted exactly once, at the render-farm boundary:
``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` (the same matrix converts back). Nothing downstream of render_farm
sees the OpenGL convention.

Building a camera
    :func:`spherical_cameras` is the one way lift3d builds cameras from (elevation, azimuth, radius, FOV): a centre
    from :func:`spherical_to_cartesian` about a target, :func:`look_at` the target with +Z up, and
    :func:`intrinsics_from_fov`. The rigs (``geometry.rigs``: the render farm, turntables, One-2-3-45's layout),
    elevation estimation and the canonical LRM camera all go through it.

Functions here accept numpy arrays (batched over leading axes); ``torch`` variants live in ``geometry.rays``.
"""

from __future__ import annotations

import math

import numpy as np

#: Flip of the y and z camera axes: OpenGL camera ↔ OpenCV camera (an involution).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world of an OpenGL/Blender camera → OpenCV camera-to-world (same world frame)."""
    return np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV


def opencv_to_opengl(c2w_cv: np.ndarray) -> np.ndarray:
    """Camera-to-world of an OpenCV camera → OpenGL/Blender camera-to-world (same world frame)."""
    return np.asarray(c2w_cv, dtype=np.float64) @ GL_TO_CV


def invert_rigid(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4×4 transforms (…, 4, 4): c2w ↔ w2c, without a general matrix inverse."""
    m = np.asarray(m, dtype=np.float64)
    out = np.zeros_like(m)
    rot_t = np.swapaxes(m[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV ``c2w`` of a camera at ``eye`` looking at ``target`` with image-up towards ``up``.

    Where the viewing direction is parallel to ``up`` (a camera straight above or below), world +Y is used as
    the up hint instead, so the result is always a proper rotation.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError(f"look_at: eye {eye.tolist()} coincides with target; the camera needs a direction")
    z = forward / norm  # camera +z: forward
    up = np.asarray(up, dtype=np.float64)
    if np.linalg.norm(np.cross(z, up)) < 1e-8:
        up = np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)  # camera +x: right  (z × up points right for a y-down camera)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # camera +y: down
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole ``K`` whose field of view across the *larger* image side is ``fov_deg`` (Blender's AUTO sensor fit).

    Square pixels, principal point at the image centre.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def fov_from_intrinsics(K: np.ndarray, width: int, height: int) -> float:
    """Field of view (degrees) across the larger image side; inverse of :func:`intrinsics_from_fov`."""
    f = K[0, 0] if width >= height else K[1, 1]
    return math.degrees(2.0 * math.atan(0.5 * max(width, height) / f))


def intrinsics_from_blender(lens_mm: float, sensor_width_mm: float, sensor_height_mm: float, sensor_fit: str,
                            width: int, height: int, pixel_aspect: float = 1.0,
                            shift_x: float = 0.0, shift_y: float = 0.0) -> np.ndarray:
    """``K`` in pixels of a Blender perspective camera (the render-farm boundary reads it from Blender's camera).

    Follows Blender's sensor-fit rules: AUTO fits the sensor width to the larger image side, HORIZONTAL to the
    width, VERTICAL (sensor height) to the height. Blender's ``shift`` is in units of the larger side and moves
    the image up/right, i.e. the principal point left/down in OpenCV pixels.
    """
    if sensor_fit == "AUTO":
        fit, size_mm = ("HORIZONTAL" if width >= height else "VERTICAL"), sensor_width_mm
    elif sensor_fit == "HORIZONTAL":
        fit, size_mm = "HORIZONTAL", sensor_width_mm
    elif sensor_fit == "VERTICAL":
        fit, size_mm = "VERTICAL", sensor_height_mm
    else:
        raise ValueError(f"unknown Blender sensor_fit {sensor_fit!r}; expected AUTO, HORIZONTAL or VERTICAL")
    view_px = width if fit == "HORIZONTAL" else height
    fx = lens_mm / size_mm * view_px
    fy = fx * pixel_aspect
    larger = max(width, height)
    cx = width / 2.0 - shift_x * larger
    cy = height / 2.0 + shift_y * larger
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``K`` of the image resized by (sx, sy) (new size / old size). Pixel-centre aware: the image edges map to
    edges."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def crop_intrinsics(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """``K`` of the crop whose top-left corner is pixel (x0, y0) of the original image."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] -= x0
    K[..., 1, 2] -= y0
    return K


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) pixel-centre coordinates (u + 0.5, v + 0.5)."""
    v, u = np.meshgrid(np.arange(height, dtype=np.float64) + 0.5, np.arange(width, dtype=np.float64) + 0.5,
                       indexing="ij")
    return np.stack([u, v], axis=-1)


def backproject_depth(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points (N, 3) of the pixels with depth > 0 (z-depth, OpenCV camera)."""
    h, w = depth.shape
    uv = pixel_grid(h, w)
    mask = depth > 0
    z = depth[mask].astype(np.float64)
    u, v = uv[mask][:, 0], uv[mask][:, 1]
    yn = (v - K[1, 2]) / K[1, 1]
    xn = (u - K[0, 2] - K[0, 1] * yn) / K[0, 0]  # skew honoured
    x, y = xn * z, yn * z
    cam = np.stack([x, y, z], axis=-1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def project_points(points: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and z-depths (N,) of world points (N, 3) in an OpenCV camera (skew honoured).

    The torch twin, batched over cameras, is ``geometry.rays.project``."""
    w2c = invert_rigid(c2w)
    cam = np.asarray(points, dtype=np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([(K[0, 0] * cam[:, 0] + K[0, 1] * cam[:, 1]) / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]],
                      axis=-1)
    return uv, z


def spherical_to_cartesian(radius, elevation_deg, azimuth_deg) -> np.ndarray:
    """Point at ``radius`` with elevation above the XY plane and azimuth measured from -Y (the object's front)
    towards +X.

    The glTF importer turns a model's front (+Z in glTF) into Blender's -Y, so azimuth 0 is a front view.
    """
    el, az = np.radians(elevation_deg), np.radians(azimuth_deg)
    return np.stack([radius * np.cos(el) * np.sin(az), -radius * np.cos(el) * np.cos(az), radius * np.sin(el)],
                    axis=-1)


def spherical_c2w(elevation_deg, azimuth_deg, radius, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenCV ``c2w`` (…, 4, 4) of cameras at (``elevation_deg``, ``azimuth_deg``, ``radius``) about ``target``
    (:func:`spherical_to_cartesian`'s angles), each looking at ``target`` with image-up towards +Z (:func:`look_at`).

    The three are broadcast together; scalars give one (4, 4) camera.
    """
    el, az, r = np.broadcast_arrays(np.asarray(elevation_deg, np.float64), np.asarray(azimuth_deg, np.float64),
                                    np.asarray(radius, np.float64))
    if np.any(r <= 0):
        raise ValueError(f"spherical_c2w: radius must be positive (the distance from the target), got {r.min()}")
    target = np.asarray(target, dtype=np.float64).reshape(3)
    eyes = spherical_to_cartesian(r, el, az) + target
    c2w = np.stack([look_at(eye, target) for eye in eyes.reshape(-1, 3)])
    return c2w.reshape(eyes.shape[:-1] + (4, 4))


def spherical_cameras(elevation_deg, azimuth_deg, radius, fov_deg, size: int, target=(0.0, 0.0, 0.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The cameras of a rig: ``c2w`` (N, 4, 4) from :func:`spherical_c2w` and ``K`` (N, 3, 3) of square ``size``²
    images with field of view ``fov_deg`` (:func:`intrinsics_from_fov`). Elevation, azimuth, radius and FOV are
    broadcast to one value per camera (N of them); float64.
    """
    el, az, r, fov = np.broadcast_arrays(*(np.atleast_1d(np.asarray(x, np.float64))
                                           for x in (elevation_deg, azimuth_deg, radius, fov_deg)))
    if el.ndim != 1:
        raise ValueError(f"spherical_cameras: expected scalars or 1-D arrays (one value per camera), got shape "
                         f"{el.shape}")
    c2w = spherical_c2w(el, az, r, target)
    K = np.stack([intrinsics_from_fov(f, int(size), int(size)) for f in fov])
    return c2w, K


def zero123_relative_camera(c2w_cond: np.ndarray, c2w_target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero123's relative viewpoint from a conditioning camera to a target camera (OpenCV ``c2w``, batched).

    Each camera centre is put in spherical coordinates about the world origin, +Z up: polar angle θ from +Z,
    azimuth φ = atan2(y, x), radius r (Zero123's ``cartesian_to_spherical``; only the centres matter, so the
    camera-axis convention does not). Returns ``(Δθ, Δφ, Δr)`` with Δθ = θ_target − θ_cond in radians (a target
    10° *higher* has Δθ = −10°), Δφ = φ_target − φ_cond wrapped to [0, 2π), Δr = r_target − r_cond. Zero123's
    conditioning vector is ``[Δθ, sin Δφ, cos Δφ, Δr]``.
    """
    def spherical(c2w):
        centre = np.asarray(c2w, dtype=np.float64)[..., :3, 3]
        x, y, z = centre[..., 0], centre[..., 1], centre[..., 2]
        return np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.linalg.norm(centre, axis=-1)

    theta_c, phi_c, r_c = spherical(c2w_cond)
    theta_t, phi_t, r_t = spherical(c2w_target)
    d_phi = np.mod(phi_t - phi_c, 2.0 * math.pi)
    d_phi = np.where(d_phi >= 2.0 * math.pi, 0.0, d_phi)  # np.mod of a tiny negative rounds up to exactly 2π
    return theta_t - theta_c, d_phi, r_t - r_c
