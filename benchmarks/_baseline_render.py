"""The public Objaverse rendering scripts' approach, reproduced for comparison (run once per object).

A fresh Blender process per object (``python -m benchmarks._baseline_render ASSET OUTDIR ...``) that renders every view
three times — the RGBA image, then the depth pass, then the normal pass, each a full Cycles render with the
same samples — and writes them as separate files. Same importer, normalisation, lighting and cameras as the
farm, so the images are comparable pixel for pixel.
"""

import json
import os
import resource
import sys

import bpy

from geometry.rigs import make_rig, object_rng
from render_farm import blender_scene as bs


def main(asset, out_dir, uid, resolution, samples, rig_name):
    settings = bs.RenderSettings(samples=samples, resolution=resolution)
    rig = make_rig(rig_name, uid, resolution)
    bs.reset_scene()
    bs.import_asset(asset)
    lo, hi, _ = bs.mesh_bounds(settings.max_faces)
    bs.colour_unshaded_meshes()
    bs.normalise_scene(lo, hi)
    bs.setup_lighting(settings, object_rng("lighting", uid, 0))
    bs.setup_render(settings)
    cam = bs.add_camera()
    bpy.context.scene.render.use_persistent_data = False  # the public scripts rebuild the scene for every render
    scene, layer = bpy.context.scene, bpy.context.view_layer
    os.makedirs(out_dir, exist_ok=True)
    for i in range(len(rig)):
        bs.pose_camera(cam, rig.c2w[i], float(rig.fov_deg[i]))
        for pass_name in ("rgba", "depth", "normal"):  # one full render per pass, as the public scripts do
            layer.use_pass_z = pass_name == "depth"
            layer.use_pass_normal = pass_name == "normal"
            if pass_name == "rgba":
                scene.render.image_settings.file_format = "PNG"
                scene.render.image_settings.color_mode = "RGBA"
                scene.render.image_settings.color_depth = "8"
                scene.render.filepath = os.path.join(out_dir, f"{i:03d}.png")
            else:
                scene.render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
                scene.render.image_settings.color_depth = "32"
                scene.render.filepath = os.path.join(out_dir, f"{i:03d}.{pass_name}.exr")
            bpy.ops.render.render(write_still=True)
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "views": len(rig)}, f)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5])
    sys.stdout.flush()
    os._exit(0)  # bpy 4.2 can crash in its own teardown at interpreter exit; everything is written
