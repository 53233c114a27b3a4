"""NeuralLabel's engine, free of bpy: cameras, datasets, field, rendering, training, labels, exports.

Everything here is plain functions over numpy arrays and torch tensors. Nothing prints; long work reports
progress through a ``progress`` callback (see :mod:`.progress`). Modules import each other relatively only,
so the worker process can load ``core`` without Blender.
"""
