"""Generated assets: small, deterministic files (written with trimesh) and their known ground truth.

Every writer takes a directory, writes one file (or a few) into it and returns :class:`GeneratedAsset` records.
A valid asset carries ``mesh``, the source geometry as a ``trimesh.Trimesh`` **in the file's own frame**, so a test
can compare rendered or re-imported geometry with it.

Frames. glTF/GLB files are +Y-up. Blender's glTF importer turns +Y-up into Blender's +Z-up world,
``(x, y, z)_gltf -> (x, -z, y)_blender`` (:func:`gltf_to_blender`). Blender 4.2's OBJ importer does the same turn by
default (``forward_axis='NEGATIVE_Z', up_axis='Y'``); its PLY and STL importers keep the file's axes
(``forward_axis='Y', up_axis='Z'``). ``GeneratedAsset.frame`` says which applies ("y_up" or "z_up") and
``GeneratedAsset.to_blender(points)`` maps points of ``mesh`` into Blender's world after import.

Broken assets (truncated, empty, zero faces) have ``valid=False``; ``mesh`` is None for the ones with no geometry.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import trimesh
from PIL import Image

# Colours (RGBA, 0-255) the writers use, so tests can look for them in renders.
CHECKER_COLOURS = ((230, 40, 40, 255), (240, 240, 240, 255))
BOX_COLOUR = (200, 30, 30, 255)
CYLINDER_COLOUR = (30, 60, 200, 255)


@dataclass
class GeneratedAsset:
    path: str
    kind: str
    mesh: trimesh.Trimesh | None  # source geometry in the file's own frame (None: no faces to compare)
    frame: str = "y_up"  # "y_up": Blender's importer turns it to +Z-up; "z_up": imported as is
    valid: bool = True
    info: dict = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def to_blender(self, points: np.ndarray) -> np.ndarray:
        """Points in this file's frame -> Blender's world after the default importer for this format."""
        return gltf_to_blender(points) if self.frame == "y_up" else np.asarray(points, dtype=np.float64).copy()


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """(x, y, z) in a +Y-up glTF file -> (x, -z, y) in Blender's +Z-up world (what the glTF importer does)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def checkerboard(size: int = 64, cells: int = 8) -> Image.Image:
    """An RGBA checkerboard of ``cells`` x ``cells`` squares in :data:`CHECKER_COLOURS`."""
    yy, xx = np.mgrid[0:size, 0:size] * cells // size
    img = np.where(((xx + yy) % 2 == 0)[..., None], CHECKER_COLOURS[0], CHECKER_COLOURS[1]).astype(np.uint8)
    return Image.fromarray(img, "RGBA")


def uv_box(extent: float = 1.0) -> trimesh.Trimesh:
    """A box with 4 unshared vertices per face (24 in all) so every face gets the full [0, 1]^2 UV square."""
    h = extent / 2.0
    # per face: the normal's axis and sign, then its two tangent axes
    verts: list[np.ndarray] = []
    faces: list[list[int]] = []
    uvs: list[tuple[int, int]] = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            u_ax, v_ax = [a for a in range(3) if a != axis]
            corners = []
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u_ax], p[v_ax] = sign * h, du * h, dv * h
                corners.append(p)
            base = len(verts)
            verts.extend(corners)
            uvs.extend([(0, 0), (1, 0), (1, 1), (0, 1)])
            tri = [[0, 1, 2], [0, 2, 3]]
            # wind so the face normal points outward
            n = np.cross(corners[1] - corners[0], corners[2] - corners[0])
            if n[axis] * sign < 0:
                tri = [[0, 2, 1], [0, 3, 2]]
            faces.extend([[base + i for i in t] for t in tri])
    mesh = trimesh.Trimesh(np.array(verts), np.array(faces), process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.array(uvs, dtype=np.float64))
    return mesh


def textured_box(directory: str, name: str = "textured_box") -> GeneratedAsset:
    """A unit box (side 1, centred at the origin) with a UV-mapped checkerboard texture, as GLB."""
    mesh = uv_box(1.0)
    image = checkerboard()
    material = trimesh.visual.material.PBRMaterial(
        name="checker", baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0
    )
    mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material)
    path = _write(os.path.join(directory, f"{name}.glb"), mesh.export(file_type="glb"))
    geometry = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), process=False)
    return GeneratedAsset(path, "textured", geometry, info={"texture_size": image.size, "colours": CHECKER_COLOURS})


def vertex_coloured_sphere(directory: str, name: str = "vertex_coloured_sphere") -> GeneratedAsset:
    """An icosphere (radius 1, 2 subdivisions) with per-vertex colours (RGB = (normal + 1) / 2), as GLB."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    rgb = np.round((mesh.vertex_normals + 1.0) / 2.0 * 255).astype(np.uint8)
    colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colours)
    path = _write(os.path.join(directory, f"{name}.glb"), mesh.export(file_type="glb"))
    geometry = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), process=False)
    return GeneratedAsset(path, "vertex_colour", geometry, info={"vertex_colours": colours})


def _solid(mesh: trimesh.Trimesh, name: str, rgba: tuple[int, int, int, int]) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        name=name, baseColorFactor=list(rgba), metallicFactor=0.0, roughnessFactor=1.0
    )
    mesh.visual = trimesh.visual.TextureVisuals(material=material)
    return mesh


def multi_material(directory: str, name: str = "multi_material") -> GeneratedAsset:
    """A scene of two meshes with two materials: a red unit cube at x = -1 and a blue cylinder at x = +1, as GLB."""
    cube = _solid(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), "red", BOX_COLOUR)
    cylinder = _solid(trimesh.creation.cylinder(radius=0.5, height=1.0, sections=24), "blue", CYLINDER_COLOUR)
    scene = trimesh.Scene()
    offsets = {"cube": (-1.0, 0.0, 0.0), "cylinder": (1.0, 0.0, 0.0)}
    for part_name, part in (("cube", cube), ("cylinder", cylinder)):
        scene.add_geometry(part, geom_name=part_name, node_name=part_name,
                           transform=trimesh.transformations.translation_matrix(offsets[part_name]))
    path = _write(os.path.join(directory, f"{name}.glb"), scene.export(file_type="glb"))
    parts = [
        trimesh.Trimesh(cube.vertices + offsets["cube"], cube.faces, process=False),
        trimesh.Trimesh(cylinder.vertices + offsets["cylinder"], cylinder.faces, process=False),
    ]
    geometry = trimesh.util.concatenate(parts)
    return GeneratedAsset(path, "multi_material", geometry, info={
        "materials": {"cube": BOX_COLOUR, "cylinder": CYLINDER_COLOUR}, "offsets": offsets,
        "parts": {"cube": parts[0], "cylinder": parts[1]},
    })


def non_manifold(directory: str, name: str = "non_manifold") -> GeneratedAsset:
    """Three triangles sharing one edge (a non-manifold edge: 3 faces) next to a closed tetrahedron, as GLB.

    ``info["non_manifold_edge"]`` holds the shared edge's two vertex positions.
    """
    fan_v = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0], [-0.5, 0.5, 0.87], [-0.5, 0.5, -0.87]])
    fan_f = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 4]])  # all three use edge (0, 1)
    tet_v = np.array([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.5, 0.0, 0.87], [2.5, 0.8, 0.3]])
    tet_f = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]]) + len(fan_v)
    mesh = trimesh.Trimesh(np.vstack([fan_v, tet_v]), np.vstack([fan_f, tet_f]), process=False)
    path = _write(os.path.join(directory, f"{name}.glb"), mesh.export(file_type="glb"))
    return GeneratedAsset(path, "non_manifold", mesh.copy(), info={"non_manifold_edge": fan_v[[0, 1]].copy()})


def simple_mesh() -> trimesh.Trimesh:
    """The mesh behind :func:`simple_formats` and the truncated GLB: a box of extents (1.0, 0.6, 0.4)."""
    return trimesh.creation.box(extents=(1.0, 0.6, 0.4))


def truncated_glb(directory: str, name: str = "truncated") -> GeneratedAsset:
    """A valid GLB cut in half (``bytes[: len // 2]``): no loader should accept it."""
    data = simple_mesh().export(file_type="glb")
    path = _write(os.path.join(directory, f"{name}.glb"), data[: len(data) // 2])
    return GeneratedAsset(path, "truncated", None, valid=False, info={"full_size": len(data)})


def empty_file(directory: str, name: str = "empty") -> GeneratedAsset:
    """A zero-byte ``.glb``."""
    path = _write(os.path.join(directory, f"{name}.glb"), b"")
    return GeneratedAsset(path, "empty", None, valid=False)


def zero_faces(directory: str, name: str = "zero_faces") -> GeneratedAsset:
    """A well-formed GLB whose only primitive is a point cloud (glTF mode POINTS): vertices, no faces."""
    points = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).vertices.copy()
    path = _write(os.path.join(directory, f"{name}.glb"), trimesh.PointCloud(points).export(file_type="glb"))
    return GeneratedAsset(path, "zero_faces", None, valid=False, info={"points": points})


def simple_formats(directory: str, stem: str = "simple") -> dict[str, GeneratedAsset]:
    """:func:`simple_mesh` written as OBJ, PLY and STL: ``{".obj": ..., ".ply": ..., ".stl": ...}``.

    Files are named ``<stem>_<format>.<ext>`` so the three uids stay distinct. The OBJ is imported +Y-up -> +Z-up by
    Blender (frame "y_up"); PLY and STL keep their axes (frame "z_up").
    """
    mesh = simple_mesh()
    out = {}
    for ext, frame in ((".obj", "y_up"), (".ply", "z_up"), (".stl", "z_up")):
        fmt = ext[1:]
        kwargs = {"include_texture": False} if fmt == "obj" else {}
        data = mesh.export(file_type=fmt, **kwargs)
        path = _write(os.path.join(directory, f"{stem}_{fmt}{ext}"), data.encode() if isinstance(data, str) else data)
        out[ext] = GeneratedAsset(path, fmt, mesh.copy(), frame=frame)
    return out


def all_assets(directory: str, include_broken: bool = True) -> list[GeneratedAsset]:
    """Every generated asset written into ``directory`` (created if needed), in a fixed order."""
    os.makedirs(directory, exist_ok=True)
    out = [textured_box(directory), vertex_coloured_sphere(directory), multi_material(directory),
           non_manifold(directory), *simple_formats(directory).values()]
    if include_broken:
        out += [truncated_glb(directory), empty_file(directory), zero_faces(directory)]
    return out


def make_asset_dir(directory: str, include_broken: bool = True) -> dict[str, str]:
    """Writes the full set into ``directory``; returns uid -> kind (uid = file stem, as LocalDirSource names it)."""
    return {a.uid: a.kind for a in all_assets(directory, include_broken)}


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """A mesh as GLB bytes (e.g. for an Objaverse-style cache in tests)."""
    return mesh.export(file_type="glb")


def load_glb(path: str) -> trimesh.Scene:
    """Loads a GLB with trimesh as a Scene (raises on a broken file)."""
    with open(path, "rb") as f:
        return trimesh.load(io.BytesIO(f.read()), file_type="glb", force="scene")


# ---------------------------------------------------------------------------------------------------------------------
# Importable-but-broken and mislabelled files (issue 14): what scraped sets hold. None is in all_assets().
# ---------------------------------------------------------------------------------------------------------------------

def _glb_parts(data: bytes) -> tuple[dict, bytes]:
    """(JSON, BIN chunk) of a well-formed GLB."""
    import json
    import struct

    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + json_len])
    bin_len = struct.unpack_from("<I", data, 20 + json_len)[0]
    return doc, data[28 + json_len:28 + json_len + bin_len]


def _glb_from_parts(doc: dict, binary: bytes) -> bytes:
    import json
    import struct

    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return (b"glTF" + struct.pack("<II", 2, total) + struct.pack("<I", len(js)) + b"JSON" + js
            + struct.pack("<I", len(binary)) + b"BIN\0" + binary)


def _textured_glb_bytes() -> bytes:
    mesh = uv_box(1.0)
    material = trimesh.visual.material.PBRMaterial(name="checker", baseColorTexture=checkerboard(),
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material)
    return mesh.export(file_type="glb")


def textured_gltf(directory: str, name: str = "textured_gltf", drop_texture: bool = False) -> GeneratedAsset:
    """The checkerboard box as a .gltf with its texture in a separate ``<name>_albedo.png`` and its buffer in
    ``<name>.bin``; ``drop_texture`` leaves the PNG out (an asset copied without its textures)."""
    import json

    doc, binary = _glb_parts(_textured_glb_bytes())
    view = doc["bufferViews"][doc["images"][0]["bufferView"]]
    png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    doc["images"][0] = {"uri": f"{name}_albedo.png", "mimeType": "image/png"}
    doc["buffers"][0]["uri"] = f"{name}.bin"
    _write(os.path.join(directory, f"{name}.bin"), binary)
    if not drop_texture:
        _write(os.path.join(directory, f"{name}_albedo.png"), png)
    path = _write(os.path.join(directory, f"{name}.gltf"), json.dumps(doc).encode())
    return GeneratedAsset(path, "missing_texture" if drop_texture else "textured", None if drop_texture else
                          trimesh.Trimesh(uv_box(1.0).vertices, uv_box(1.0).faces, process=False),
                          valid=not drop_texture, info={"texture": f"{name}_albedo.png"})


def nan_positions_glb(directory: str, name: str = "nan_positions", value: float = float("nan")) -> GeneratedAsset:
    """:func:`simple_mesh` as GLB whose first vertex position is ``value`` (NaN or inf) in the binary buffer."""
    doc, binary = _glb_parts(simple_mesh().export(file_type="glb"))
    acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    view = doc["bufferViews"][acc["bufferView"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    binary = bytearray(binary)
    binary[start:start + 12] = np.full(3, value, "<f4").tobytes()
    path = _write(os.path.join(directory, f"{name}.glb"), _glb_from_parts(doc, bytes(binary)))
    return GeneratedAsset(path, "nan_positions", None, valid=False)


def draco_glb(directory: str, name: str = "draco") -> GeneratedAsset:
    """A GLB laid out as Draco-compressed: ``KHR_draco_mesh_compression`` used and required, and its primitive
    pointing at a bufferView of Draco bytes. (The bytes are a Draco header only, not a decodable stream: the project
    ships no Draco encoder; the pip bpy wheel cannot decode either.)"""
    doc, binary = _glb_parts(simple_mesh().export(file_type="glb"))
    binary += b"\0" * (-len(binary) % 4)
    draco_bytes = b"DRACO\x02\x02\x01\x01\x00\x00" + bytes(21)
    doc["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(draco_bytes)})
    binary += draco_bytes
    doc["buffers"][0]["byteLength"] = len(binary) + (-len(binary) % 4)
    prim = doc["meshes"][0]["primitives"][0]
    prim["extensions"] = {"KHR_draco_mesh_compression": {"bufferView": len(doc["bufferViews"]) - 1,
                                                         "attributes": {"POSITION": 0}}}
    doc["extensionsUsed"] = doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    path = _write(os.path.join(directory, f"{name}.glb"), _glb_from_parts(doc, binary))
    return GeneratedAsset(path, "draco", None, valid=False)


def html_as_glb(directory: str, name: str = "html_page") -> GeneratedAsset:
    """An HTML page saved as ``.glb`` (a download that returned a login or error page)."""
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"
    return GeneratedAsset(_write(os.path.join(directory, f"{name}.glb"), page), "html", None, valid=False)


def lfs_pointer_glb(directory: str, name: str = "lfs_pointer") -> GeneratedAsset:
    """A Git-LFS pointer file saved as ``.glb`` (a clone made without ``git lfs``)."""
    pointer = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1048576\n")
    return GeneratedAsset(_write(os.path.join(directory, f"{name}.glb"), pointer), "lfs", None, valid=False)
