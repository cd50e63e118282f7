"""The coco(...) data source (runtime/coco.py): a COCO instances file and its images read with
json and Pillow — boxes scaled with their images, classes by sorted category id, crowd
annotations skipped, located errors naming the file — and detectors training on it."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dlc.cli import main
from test_detectors import TINY_FAST_RCNN, TINY_YOLO

# category id -> name, ids unsorted and not 1..C: classes are 1..C by sorted id
CATEGORIES = {7: "dog", 3: "cat", 5: "bird"}
CLASS_OF = {3: 1, 5: 2, 7: 3}
SHAPES_DATA = re.compile(r"shapes\([^)]*\)")


def _annotations(n: int) -> list:
    """Image k (id 10 + k) holds k % 3 + 1 objects; image 1 also a crowd region."""
    anns = []
    for k in range(n):
        for j in range(k % 3 + 1):
            anns.append({"id": 100 * k + j, "image_id": 10 + k, "category_id": [3, 5, 7][j],
                         "bbox": [2.0 + 3 * j, 1.5 + j, 8.0 + 2 * j, 6.0 + k], "iscrowd": 0})
    anns.append({"id": 999, "image_id": 11, "category_id": 7, "bbox": [0, 0, 30, 20],
                 "iscrowd": 1})
    return anns


def write_coco(root, n=4) -> dict:
    """A COCO folder: n solid-colour PNGs of different sizes (listed in reverse id order)."""
    from PIL import Image
    (root / "images").mkdir(parents=True)
    images = []
    for k in reversed(range(n)):
        w, h = 40 + 4 * k, 30
        Image.fromarray(np.full((h, w, 3), 20 * k, np.uint8)).save(root / "images" / f"{k}.png")
        images.append({"id": 10 + k, "file_name": f"{k}.png", "width": w, "height": h})
    doc = {"images": images, "annotations": _annotations(n),
           "categories": [{"id": i, "name": name} for i, name in CATEGORIES.items()]}
    (root / "annotations.json").write_text(json.dumps(doc))
    return doc


def test_the_reader_scales_boxes_and_orders_images_and_classes(tmp_path):
    from dlc.runtime.coco import read_coco
    doc = write_coco(tmp_path / "COCO")
    d = read_coco(tmp_path / "COCO" / "annotations.json", tmp_path / "COCO" / "images", (20, 24))
    assert d["names"] == ["background", "cat", "bird", "dog"]
    assert d["x"].shape == (4, 3, 20, 24) and d["x"].dtype == np.float32
    for k in range(4):                                          # by image id, pixels in [0, 1]
        np.testing.assert_allclose(d["x"][k], 20 * k / 255, atol=1e-6)
    assert d["boxes"].shape == (4, 3, 5)                        # image 2 has three objects
    for k in range(4):
        sx, sy = 24 / (40 + 4 * k), 20 / 30
        want = [[CLASS_OF[a["category_id"]], a["bbox"][0] * sx, a["bbox"][1] * sy,
                 (a["bbox"][0] + a["bbox"][2]) * sx, (a["bbox"][1] + a["bbox"][3]) * sy]
                for a in doc["annotations"] if a["image_id"] == 10 + k and not a["iscrowd"]]
        np.testing.assert_allclose(d["boxes"][k, :len(want)], want, rtol=1e-6)
        assert (d["boxes"][k, len(want):, 0] == -1).all()      # padding rows; the crowd left out
        areas = [(b[3] - b[1]) * (b[4] - b[2]) for b in want]
        assert d["y"][k] == want[int(np.argmax(areas))][0]      # the largest box's class


def _spec(tmp_path, text):
    path = tmp_path / "coco.dls"
    path.write_text(SHAPES_DATA.sub('coco(root="COCO", size=16, val=0.2, test=0.2)', text))
    return path


@pytest.mark.parametrize("text", [TINY_YOLO, TINY_FAST_RCNN], ids=["yolo", "fast_rcnn"])
def test_a_detector_trains_on_a_coco_folder(tmp_path, text):
    assert SHAPES_DATA.search(text)
    write_coco(tmp_path / "COCO", n=10)
    spec = _spec(tmp_path, text.replace("epochs    2", "epochs    1"))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["epochs_run"] == 1 and 0 <= final["test_map"] <= final["test_map50"] <= 1
    assert set(final["test_ap"]) == {"cat", "bird", "dog"}


MUTATIONS = {
    "unknown image": (lambda d, r: d["annotations"][0].update(image_id=77),
                      "annotation 0 names the image 77, which the images list does not hold"),
    "unknown category": (lambda d, r: d["annotations"][1].update(category_id=4),
                         "annotation 100 names the category 4, which the categories list "
                         "does not hold"),
    "degenerate box": (lambda d, r: d["annotations"][2].update(bbox=[5, 5, 0, 3]),
                       "annotation 101 has the box [5, 5, 0, 3]; a box is [x, y, width, "
                       "height] with a positive width and height"),
    "missing image": (lambda d, r: (r / "images" / "2.png").unlink(),
                      "image 12 has no file"),
    "duplicate id": (lambda d, r: d["categories"][1].update(id=7),
                     "two entries of the categories list have the id 7"),
    "id not a number": (lambda d, r: d["images"][0].update(id="a"),
                        "entry 0 (counting from 0) of the images list needs a whole-number "
                        "'id' and 'file_name'"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_annotation_is_a_located_error(tmp_path, capsys, name):
    mutate, message = MUTATIONS[name]
    root = tmp_path / "COCO"
    doc = write_coco(root)
    mutate(doc, root)
    (root / "annotations.json").write_text(json.dumps(doc))
    spec = _spec(tmp_path, TINY_YOLO)
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "coco.dls:8:15: error: " in err and "annotations.json: " in err
    assert message in err


@pytest.mark.parametrize("text, message", [
    (None, "no annotation file"),
    ("{\"images\": [", "not a readable COCO annotation file"),
    ("[1, 2]", "holds one object with the lists images, annotations and categories"),
    ("{\"images\": []}", "needs a list 'annotations'"),
])
def test_an_unreadable_annotation_file_is_a_located_error(tmp_path, capsys, text, message):
    (tmp_path / "COCO" / "images").mkdir(parents=True)
    if text is not None:
        (tmp_path / "COCO" / "annotations.json").write_text(text)
    spec = _spec(tmp_path, TINY_YOLO)
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "coco.dls:8:15: error: " in err and "annotations.json" in err and message in err
