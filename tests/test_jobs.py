"""Job requests: validated when made, errors name the request field; job objects map onto requests by name."""

from __future__ import annotations

import numpy as np
import pytest

from neurallabel.core.app.jobs import (BakeRequest, DemoRequest, SnapRequest, SurfacePointsRequest, TrainRequest,
                                       request_from_job)
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.labels.frame import LabelOptions


def field_of(make) -> str:
    with pytest.raises(NeuralLabelError) as error:
        make()
    return error.value.field


def test_requests_name_the_field_at_fault(tmp_path):
    assert field_of(lambda: BakeRequest("s.json", "out", frames="1-2")) == "frames"
    assert field_of(lambda: BakeRequest("s.json", "out", shard="2/2")) == "shard"
    assert field_of(lambda: BakeRequest("s.json", "out", formats="bop,voc")) == "formats"
    assert field_of(lambda: BakeRequest("s.json", "out", device="gpu")) == "device"
    assert field_of(lambda: BakeRequest("s.json", "out", options={"occlusion_mm": 3})) == "options"
    assert field_of(lambda: BakeRequest("s.json", None)) == "out"
    assert field_of(lambda: TrainRequest("d", "f.pt", steps=10, minutes=1.0)) == "steps"
    assert field_of(lambda: TrainRequest("d", "f.pt", minutes=0)) == "minutes"
    assert field_of(lambda: DemoRequest(views=1)) == "views"
    (tmp_path / "file").write_text("x")
    assert field_of(lambda: DemoRequest(out=tmp_path / "file")) == "out"
    assert field_of(lambda: SurfacePointsRequest("d", "o.npy", field="f.pt", world_from_data=np.diag([1, 2, 1, 1]))
                    ) == "world_from_data"
    assert field_of(lambda: SurfacePointsRequest("d", "o.npy", depth_dir="depth")) == "field"  # a cloud needs one
    assert field_of(lambda: SnapRequest("m.ply", np.eye(3), "d", field="f.pt")) == "pose"
    assert field_of(lambda: SnapRequest("m.ply", np.eye(4), "d")) == "field"


def test_job_objects_become_requests_by_field_name():
    request = request_from_job({"kind": "bake", "spec": "s.json", "out": "o", "formats": ["raw", "bop"],
                                "frames": [0, 3], "device": "CUDA:1", "options": {"occlusion_abs_mm": 2.0},
                                "sys_path": []}, ignore=("sys_path",))
    assert isinstance(request, BakeRequest) and request.formats == ("bop", "raw") and request.device == "cuda:1"
    assert request.options == LabelOptions(occlusion_abs_mm=2.0)
    # None is "the default", as the add-on writes it.
    request = request_from_job({"kind": "surface_points", "data": "d", "field": "f.pt", "box": None,
                                "max_views": None, "out": "o.npy"})
    assert request.box is None and request.max_views is None and np.array_equal(request.world_from_data.matrix,
                                                                                 np.eye(4))
    box = {"pose": np.eye(4).tolist(), "size": [1, 2, 3]}
    request = request_from_job({"kind": "snap", "data": "d", "depth_dir": "t", "mesh": "m.ply",
                                "pose": np.eye(4).tolist(), "max_distance": 0})
    assert request.max_distance is None  # 0: the default distance
    assert request_from_job({"kind": "surface_points", "data": "d", "depth_dir": "t", "box": box,
                             "out": "o.npy"}).box.size.tolist() == [1, 2, 3]
    for job, field in [({"kind": "bake", "out": "o"}, "spec"), ({"kind": "bake", "spec": "s", "out": "o", "x": 1}, "x"),
                       ({"kind": "nope"}, "kind"),
                       ({"kind": "surface_points", "data": "d", "depth_dir": "t", "out": "o", "box": {"pose": 1}},
                        "box")]:
        assert field_of(lambda: request_from_job(job)) == field
