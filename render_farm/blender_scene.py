"""Everything that touches ``bpy``: one object in, posed RGBA + depth + normals out.

Runs inside a render worker process (``render_farm.worker``) over the pip ``bpy`` 4.2 module. Per object:
reset to an empty scene, import, normalise into [-1, 1]^3, light, then render every rig view once with Cycles
into a float multilayer EXR (Combined + Depth + Normal passes in one render), which is converted here to the
shard format v1 arrays. The OpenGL → OpenCV camera conversion happens here and nowhere else.
"""

from __future__ import annotations

import math
import os
import tempfile

import bpy
import numpy as np
from mathutils import Matrix, Vector

from geometry.cameras import intrinsics_from_blender, opencv_to_opengl, opengl_to_opencv
from geometry.normalization import normalization_from_bounds, normalization_matrix
from geometry.rigs import Rig
from render_farm.asset_checks import AssetError, check_asset
from render_farm.config import RenderSettings

IMPORTERS = {
    ".glb": "gltf", ".gltf": "gltf", ".obj": "obj", ".ply": "ply", ".stl": "stl", ".fbx": "fbx",
}


def reset_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def import_asset(path: str, allow_missing_textures: bool = False, warnings: list | None = None) -> list:
    """Imports ``path`` into the scene (after :func:`check_asset`; its warnings are appended to ``warnings``)."""
    ext = os.path.splitext(path)[1].lower()
    kind = IMPORTERS.get(ext)
    if kind is None:
        raise AssetError(f"unsupported asset type {ext!r} ({path}); supported: {', '.join(sorted(IMPORTERS))}")
    if os.path.getsize(path) == 0:
        raise AssetError(f"empty file: {path}")
    found = check_asset(path, allow_missing_textures)
    if warnings is not None:
        warnings.extend(found)
    before = set(bpy.data.objects)
    try:
        if kind == "gltf":
            result = bpy.ops.import_scene.gltf(filepath=path)
        elif kind == "obj":
            result = bpy.ops.wm.obj_import(filepath=path)
        elif kind == "ply":
            result = bpy.ops.wm.ply_import(filepath=path)
        elif kind == "stl":
            result = bpy.ops.wm.stl_import(filepath=path)
        else:
            result = bpy.ops.import_scene.fbx(filepath=path)
    except Exception as exc:  # Blender's importers raise RuntimeError with the importer's own message
        reason = str(exc).strip().splitlines()[-1] if str(exc) else repr(exc)
        raise AssetError(f"import failed for {path}: {reason}") from None
    if "FINISHED" not in result:
        raise AssetError(f"import of {path} returned {sorted(result)}")
    return [o for o in bpy.data.objects if o not in before]


def mesh_bounds(max_faces: int) -> tuple[np.ndarray, np.ndarray, int]:
    """World bounding box and face count of every evaluated mesh in the scene."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    lo, hi, faces = np.full(3, np.inf), np.full(3, -np.inf), 0
    for obj in bpy.context.scene.objects:
        if obj.type != "MESH":
            continue
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        n = len(mesh.vertices)
        faces += len(mesh.polygons)
        if n:
            co = np.empty(n * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            co = co.reshape(-1, 3)
            if not np.isfinite(co).all():
                bad = int((~np.isfinite(co)).any(axis=1).sum())
                ev.to_mesh_clear()
                raise AssetError(f"mesh {obj.name!r} has {bad} of {n} vertices at non-finite (NaN/inf) positions; "
                                 f"fix or drop the asset")
            mw = np.array(ev.matrix_world)
            world = co @ mw[:3, :3].T + mw[:3, 3]
            lo, hi = np.minimum(lo, world.min(0)), np.maximum(hi, world.max(0))
        ev.to_mesh_clear()
        if faces > max_faces:
            raise AssetError(f"asset too large: more than {max_faces} faces (raise render.max_faces to allow it)")
    if faces == 0:
        raise AssetError("asset has no mesh faces to render")
    return lo, hi, faces


def colour_unshaded_meshes() -> int:
    """Give meshes that carry vertex colours but no material a material that shows them (glTF COLOR_0 without
    a material, PLY/OBJ colours); Blender would otherwise render them plain grey. Returns how many were fixed."""
    fixed = 0
    for obj in bpy.context.scene.objects:
        if obj.type != "MESH" or any(obj.data.materials) or not obj.data.color_attributes:
            continue
        mat = bpy.data.materials.new(f"lift3d_vertex_colour_{obj.name}")
        mat.use_nodes = True
        nodes = mat.node_tree.nodes
        attr = nodes.new("ShaderNodeVertexColor")
        attr.layer_name = obj.data.color_attributes[0].name
        mat.node_tree.links.new(attr.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
        obj.data.materials.append(mat)
        fixed += 1
    return fixed


def normalise_scene(lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
    """Centre and scale every root object so the scene's box [lo, hi] fits [-1, 1]^3; returns (scale, offset)."""
    scale, offset = normalization_from_bounds(lo, hi)
    m = Matrix(normalization_matrix(scale, offset).tolist())
    for obj in bpy.context.scene.objects:
        if obj.parent is None:
            obj.matrix_world = m @ obj.matrix_world
    bpy.context.view_layer.update()
    return scale, offset


def setup_lighting(settings: RenderSettings, rng: np.random.Generator) -> dict:
    world = bpy.data.worlds.new("lift3d_world")
    bpy.context.scene.world = world
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    if settings.lighting == "random":
        strength = float(rng.uniform(0.3, 1.0))
        key_dir = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(0.2, 1.0)))
        key_energy = float(rng.uniform(1.0, 4.0))
    elif settings.lighting == "fixed":
        strength, key_dir, key_energy = settings.world_strength, (0.4, -0.6, 0.7), 2.5
    else:
        raise ValueError(f"unknown lighting {settings.lighting!r}; expected 'fixed' or 'random'")
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = strength
    sun = bpy.data.lights.new("lift3d_key", type="SUN")
    sun.energy = key_energy
    sun_obj = bpy.data.objects.new("lift3d_key", sun)
    bpy.context.scene.collection.objects.link(sun_obj)
    d = np.asarray(key_dir) / np.linalg.norm(key_dir)  # from the object towards the light
    sun_obj.rotation_euler = Vector((0.0, 0.0, 1.0)).rotation_difference(Vector(d.tolist())).to_euler()  # -Z → -d
    return {"mode": settings.lighting, "world_strength": strength, "key_direction": d.tolist(),
            "key_energy": key_energy}


def setup_render(settings: RenderSettings) -> None:
    scene = bpy.context.scene
    if settings.engine != "CYCLES":
        raise ValueError(f"engine {settings.engine!r} is not supported on CPU render nodes; use CYCLES")
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = settings.samples
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = settings.denoise
    scene.cycles.seed = settings.seed
    scene.render.threads_mode = "FIXED" if settings.threads else "AUTO"
    if settings.threads:
        scene.render.threads = settings.threads
    scene.render.use_persistent_data = True  # keep the BVH between the views of one object
    scene.render.film_transparent = True
    scene.render.resolution_x = scene.render.resolution_y = settings.resolution
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.display_settings.display_device = "sRGB"
    fmt = scene.render.image_settings
    fmt.file_format = "OPEN_EXR_MULTILAYER"
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"
    layer = bpy.context.view_layer
    layer.use_pass_combined = True
    layer.use_pass_z = True
    layer.use_pass_normal = True


def add_camera() -> bpy.types.Object:
    cam = bpy.data.cameras.new("lift3d_camera")
    cam.type = "PERSP"
    cam.sensor_fit = "AUTO"
    cam.clip_start, cam.clip_end = 0.01, 100.0
    obj = bpy.data.objects.new("lift3d_camera", cam)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.camera = obj
    return obj


def pose_camera(cam_obj, c2w_cv: np.ndarray, fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Place the Blender camera; returns the (c2w OpenCV, K) read back from Blender's own camera."""
    cam_obj.matrix_world = Matrix(opencv_to_opengl(c2w_cv).tolist())
    cam = cam_obj.data
    cam.lens_unit = "FOV"
    cam.angle = math.radians(fov_deg)
    bpy.context.view_layer.update()
    r = bpy.context.scene.render
    K = intrinsics_from_blender(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                                r.resolution_x, r.resolution_y, r.pixel_aspect_y / r.pixel_aspect_x,
                                cam.shift_x, cam.shift_y)
    return opengl_to_opencv(np.array(cam_obj.matrix_world)), K


def read_exr_passes(path: str) -> dict[str, np.ndarray]:
    """Combined RGBA, Depth and Normal passes of a Blender multilayer EXR as float32 (H, W, C) arrays."""
    import OpenEXR

    with OpenEXR.File(path, separate_channels=True) as f:
        ch = {name: np.array(c.pixels, dtype=np.float32) for name, c in f.channels().items()}
    layer = next((n.rsplit(".", 2)[0] for n in ch if n.endswith(".Combined.R")), None)
    if layer is None:
        raise RuntimeError(f"{path} has no Combined pass; channels: {sorted(ch)}")

    def get(*names):
        return np.stack([ch[n] for n in names], axis=-1)

    return {
        "rgba": get(*(f"{layer}.Combined.{c}" for c in "RGBA")),
        "depth": ch[f"{layer}.Depth.Z"],
        "normal": get(*(f"{layer}.Normal.{c}" for c in "XYZ")),
    }


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Blender's "Standard" view transform for the sRGB display: the piecewise sRGB OETF, clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def passes_to_views(passes: dict[str, np.ndarray], depth_scale: float) -> dict[str, np.ndarray]:
    """EXR passes → shard arrays: straight-alpha sRGB RGBA uint8, z-depth uint16 (0 = none), normals uint8."""
    rgba = passes["rgba"]
    alpha = np.clip(rgba[..., 3:4], 0.0, 1.0)
    safe = np.where(alpha > 1e-6, alpha, 1.0)
    straight = np.where(alpha > 1e-6, rgba[..., :3] / safe, 0.0)  # Cycles' combined pass is premultiplied
    rgb8 = np.round(linear_to_srgb(straight) * 255.0)
    rgba8 = np.concatenate([rgb8, np.round(alpha * 255.0)], axis=-1).astype(np.uint8)
    depth = passes["depth"]
    # a surface pixel is mostly covered and has a hit in the depth pass (Cycles writes 1e10 for a miss)
    surface = (alpha[..., 0] >= 0.5) & (depth < 1e9)
    depth_q = np.where(surface, np.round(depth * depth_scale), 0.0)
    if depth_q.max(initial=0) > 65535:
        raise AssetError(f"depth {depth_q.max() / depth_scale:.2f} exceeds the uint16 range at depth_scale "
                         f"{depth_scale}; lower depth_scale in the render config")
    n = passes["normal"] / safe  # normal pass is coverage-weighted at silhouette pixels
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8)
    normal8 = np.where(surface[..., None], np.round((n + 1.0) * 0.5 * 255.0), 0.0).astype(np.uint8)
    return {"rgba": rgba8, "depth": depth_q.astype(np.uint16), "normal": normal8}


def rendered_mesh(max_faces: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The geometry as Cycles renders it: every visible mesh object evaluated by the depsgraph (modifiers, armature
    skinning, shape keys, the current frame's pose), triangulated, in the normalised world. Above ``max_faces``
    triangles it is decimated with Blender's Decimate modifier (collapse) to about that many. Returns (vertices
    float32 (V, 3), faces int32 (F, 3), info for meta.json)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    verts, faces, offset = [], [], 0
    for obj in bpy.context.scene.objects:
        if obj.type != "MESH" or obj.hide_render:
            continue
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        mesh.calc_loop_triangles()
        n, t = len(mesh.vertices), len(mesh.loop_triangles)
        if n and t:
            co = np.empty(n * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            tri = np.empty(t * 3, dtype=np.int64)
            mesh.loop_triangles.foreach_get("vertices", tri)
            mw = np.array(ev.matrix_world)
            verts.append(co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3])
            faces.append(tri.reshape(-1, 3) + offset)
            offset += n
        ev.to_mesh_clear()
    if not faces:
        raise AssetError("no rendered mesh faces to store as the ground-truth mesh")
    v, f = np.concatenate(verts), np.concatenate(faces)
    info = {"faces": int(len(f)), "rendered_faces": int(len(f)), "decimated": False}
    if len(f) > max_faces:
        v, f = _decimate(v, f, max_faces / len(f))
        info.update(faces=int(len(f)), decimated=True)
    return v.astype(np.float32), f.astype(np.int32), info


def _decimate(verts: np.ndarray, faces: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """``verts``/``faces`` through Blender's Decimate modifier (collapse, ``ratio``) on a scratch object that is
    removed again (so the scene that was rendered is unchanged)."""
    mesh = bpy.data.meshes.new("lift3d_gt_mesh")  # built with foreach_set: from_pydata's lists are slow at 1M faces
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    mesh.loops.add(3 * len(faces))
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * len(faces), 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    obj = bpy.data.objects.new("lift3d_gt_mesh", mesh)
    bpy.context.scene.collection.objects.link(obj)
    try:
        mod = obj.modifiers.new("lift3d_decimate", "DECIMATE")
        mod.decimate_type, mod.ratio, mod.use_collapse_triangulate = "COLLAPSE", float(ratio), True
        depsgraph = bpy.context.evaluated_depsgraph_get()
        ev = obj.evaluated_get(depsgraph)
        out = ev.to_mesh()
        out.calc_loop_triangles()
        co = np.empty(len(out.vertices) * 3, dtype=np.float64)
        out.vertices.foreach_get("co", co)
        tri = np.empty(len(out.loop_triangles) * 3, dtype=np.int64)
        out.loop_triangles.foreach_get("vertices", tri)
        ev.to_mesh_clear()
    finally:
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
    return co.reshape(-1, 3), tri.reshape(-1, 3)


def render_object(path: str, rig: Rig, settings: RenderSettings, depth_scale: float, workdir: str | None = None,
                  rng: np.random.Generator | None = None, allow_missing_textures: bool = False) -> dict:
    """Import ``path``, normalise it and render every rig view. Returns arrays and metadata for the shard
    (``warnings``: what :func:`check_asset` let through, e.g. missing textures when allowed; ``gt_mesh``: the
    rendered geometry, :func:`rendered_mesh`, unless ``settings.gt_mesh_faces`` is 0)."""
    reset_scene()
    warnings: list[str] = []
    import_asset(path, allow_missing_textures, warnings)
    lo, hi, faces = mesh_bounds(settings.max_faces)
    colour_unshaded_meshes()
    scale, offset = normalise_scene(lo, hi)
    lighting = setup_lighting(settings, rng if rng is not None else np.random.default_rng(settings.seed))
    setup_render(settings)
    cam_obj = add_camera()
    views, c2ws, Ks = [], [], []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="lift3d-exr-") as tmp:
        for i in range(len(rig)):
            c2w, K = pose_camera(cam_obj, rig.c2w[i], float(rig.fov_deg[i]))
            exr = os.path.join(tmp, f"{i:03d}.exr")
            bpy.context.scene.render.filepath = exr
            bpy.ops.render.render(write_still=True)
            views.append(passes_to_views(read_exr_passes(exr), depth_scale))
            os.remove(exr)
            c2ws.append(c2w)
            Ks.append(K)
    gt_mesh = rendered_mesh(settings.gt_mesh_faces) if settings.gt_mesh_faces > 0 else None
    return {
        "views": views,
        "c2w": np.stack(c2ws).astype(np.float32),
        "K": np.stack(Ks).astype(np.float32),
        "hw": np.tile(np.array([settings.resolution] * 2, dtype=np.int32), (len(rig), 1)),
        "normalization": {"scale": float(scale), "offset": [float(v) for v in offset]},
        "faces": int(faces),
        "lighting": lighting,
        "warnings": warnings,
        "gt_mesh": gt_mesh,  # (vertices, faces, info) of rendered_mesh, or None with gt_mesh_faces: 0
    }
