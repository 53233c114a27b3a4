"""``neurallabel.add_box`` and ``neurallabel.add_mesh``: create annotations.

A box is a unit cube whose object scale is the box size. A mesh is imported with Blender's own importers
so that its local vertices are the file's vertices (its own frame); the object matrix places it.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import FloatVectorProperty, StringProperty
from bpy_extras.io_utils import ImportHelper
from mathutils import Matrix, Vector

from ..addon import annotations

MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".stl")
# glTF is Y-up by definition and Blender's importer turns it Z-up (+90 degrees about X); the other
# importers are told to keep the file's axes.
GLTF_TO_BLENDER = Matrix.Rotation(1.5707963267948966, 4, "X")


def _object_mode(cls: type, context: bpy.types.Context) -> bool:
    if context.scene is None:
        cls.poll_message_set("No scene")
        return False
    if context.mode != "OBJECT":
        cls.poll_message_set("Switch to Object Mode to add annotations")
        return False
    return True


def _select_only(context: bpy.types.Context, obj: bpy.types.Object) -> None:
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


class NEURALLABEL_OT_add_box(bpy.types.Operator):
    """Add a box annotation enclosing the selected objects, or at the 3D cursor"""

    bl_idname = "neurallabel.add_box"
    bl_label = "Add Box"
    bl_options = {"REGISTER", "UNDO"}

    size: FloatVectorProperty(name="Size", default=(0.2, 0.2, 0.2), min=1e-6, subtype="XYZ", unit="LENGTH",
                              description="Box size when nothing is selected")
    category: StringProperty(name="Category", default="", description="Object class of the box")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _object_mode(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        selection = [o for o in context.selected_objects if o.type != "CAMERA" and o != scene.neurallabel.root]
        bounds = annotations.selection_bounds(selection)
        if bounds is not None:
            lo, hi = bounds
            location, rotation = (lo + hi) / 2.0, Matrix.Identity(3)
            size = Vector(max(s, 1e-4) for s in (hi - lo))
        else:
            cursor = scene.cursor
            location, rotation = cursor.location.copy(), cursor.matrix.to_3x3().normalized()
            size = Vector(self.size)
        name = self.category or "Box"
        obj = bpy.data.objects.new(name, annotations.unit_cube_mesh(name))
        annotations.annotations_collection(scene).objects.link(obj)
        obj.matrix_world = Matrix.Translation(location) @ rotation.to_4x4()
        obj.scale = size  # the box size; the pose stays rigid
        obj.display_type = "WIRE"
        obj.show_in_front = True
        annotations.make_annotation(obj, "BOX", self.category, scene)
        _select_only(context, obj)
        return {"FINISHED"}


def _import(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    elif suffix == ".stl":
        bpy.ops.wm.stl_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    else:
        try:
            bpy.ops.import_scene.gltf.get_rna_type()
        except KeyError:
            raise RuntimeError("the glTF importer is off: enable the 'glTF 2.0 format' add-on") from None
        bpy.ops.import_scene.gltf(filepath=str(path))


_ID_COLLECTIONS = ("objects", "meshes", "materials", "images", "textures", "node_groups", "collections",
                   "actions", "cameras", "lights", "armatures")


def _snapshot() -> dict[str, set]:
    return {name: set(getattr(bpy.data, name)) for name in _ID_COLLECTIONS}


def _remove_new(before: dict[str, set], keep: set = frozenset()) -> None:
    """Remove every data-block created since ``before`` (except ``keep``): a failed import leaves nothing."""
    for name in _ID_COLLECTIONS:
        collection = getattr(bpy.data, name)
        for block in set(collection) - before[name]:
            if block not in keep:
                collection.remove(block)


class NEURALLABEL_OT_add_mesh(bpy.types.Operator, ImportHelper):
    """Add a known mesh (PLY, OBJ, glTF/GLB, STL) as an annotation that keeps the file's frame"""

    bl_idname = "neurallabel.add_mesh"
    bl_label = "Add Mesh"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    filter_glob: StringProperty(default="*.ply;*.obj;*.glb;*.gltf;*.stl", options={"HIDDEN"})
    filepath: StringProperty(name="File Path", subtype="FILE_PATH")
    category: StringProperty(name="Category", default="", description="Object class; default: the file name")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _object_mode(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = Path(bpy.path.abspath(self.filepath)) if self.filepath else None
        if path is None or not path.is_file():
            self.report({"ERROR"}, f"Mesh file {path} does not exist: choose a PLY, OBJ, GLB or STL file")
            return {"CANCELLED"}
        if path.suffix.lower() not in MESH_SUFFIXES:
            self.report({"ERROR"}, f"{path}: cannot import {path.suffix or 'files without a suffix'}; "
                                   f"use {', '.join(MESH_SUFFIXES)}")
            return {"CANCELLED"}
        scene = context.scene
        before = _snapshot()
        selected_before = list(context.selected_objects)
        active_before = context.view_layer.objects.active
        try:
            _import(path)
            imported = [o for o in set(bpy.data.objects) - before["objects"]]
            meshes = [o for o in imported if o.type == "MESH" and len(o.data.vertices) > 0]
            if not meshes:
                raise RuntimeError("the file holds no mesh")
            obj = self._single_mesh(context, meshes, path)
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            _remove_new(before)
            for o in selected_before:
                o.select_set(True)
            context.view_layer.objects.active = active_before
            message = str(exc).strip().splitlines()[-1].rstrip(".") if str(exc).strip() else type(exc).__name__
            self.report({"ERROR"}, f"Blender cannot read the mesh {path}: {message}. "
                                   "Check the file, or convert it to PLY/OBJ (nothing was added)")
            return {"CANCELLED"}
        # Only the annotation object, its mesh and its materials stay; helper empties go.
        keep = {obj, obj.data, *[m for m in obj.data.materials if m is not None]}
        keep |= {i for i in set(bpy.data.images) - before["images"]}
        _remove_new({**before, "images": set(bpy.data.images), "materials": set(bpy.data.materials),
                     "textures": set(bpy.data.textures), "node_groups": set(bpy.data.node_groups)}, keep)
        for collection in list(obj.users_collection):
            collection.objects.unlink(obj)
        annotations.annotations_collection(scene).objects.link(obj)
        obj.name = self.category or path.stem
        obj.neurallabel.mesh_path = str(path)
        annotations.make_annotation(obj, "MESH", self.category or path.stem, scene)
        _select_only(context, obj)
        self.report({"INFO"}, f"Added mesh annotation {obj.name!r} ({len(obj.data.vertices)} vertices)")
        return {"FINISHED"}

    @staticmethod
    def _single_mesh(context: bpy.types.Context, meshes: list[bpy.types.Object], path: Path
                     ) -> bpy.types.Object:
        """Join the imported meshes into one object whose local vertices are in the file's frame."""
        meshes.sort(key=lambda o: o.name)
        obj = meshes[0]
        # Bake each object's import transform into its mesh, so local = Blender world = importer output.
        for o in meshes:
            if o.data.users > 1:
                o.data = o.data.copy()
            o.data.transform(o.matrix_world)
            o.parent = None
            o.matrix_world = Matrix.Identity(4)
        if len(meshes) > 1:
            with context.temp_override(active_object=obj, object=obj, selected_objects=meshes,
                                       selected_editable_objects=meshes):
                bpy.ops.object.join()
        file_to_blender = GLTF_TO_BLENDER if path.suffix.lower() in (".glb", ".gltf") else Matrix.Identity(4)
        obj.data.transform(file_to_blender.inverted())
        obj.matrix_world = Matrix.Translation(context.scene.cursor.location) @ file_to_blender
        return obj


classes = (NEURALLABEL_OT_add_box, NEURALLABEL_OT_add_mesh)
register, unregister = bpy.utils.register_classes_factory(classes)
