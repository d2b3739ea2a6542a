"""The synthetic generators share their scene elements, and the downstream ones did not change.

The recorded sha256 values below were computed from the downstream generators before their
drawing code moved into ``rsfm_ds/data/synth/elements.py``: they pin the DOTA / DIOR-R / Potsdam /
LoveDA output byte for byte (quickstart figures and learning tests depend on it).
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from rsfm_ds.data.synth.detection import synth_dior, synth_dota
from rsfm_ds.data.synth.millionaid import LAYOUTS, leaf_paths, render_scene, synth_millionaid
from rsfm_ds.data.synth.segmentation import synth_loveda, synth_potsdam

RECORDED_SHA256 = {
    # rsfm synth dota
    "dota/images/P0000.png": "c7bb9f03e7133b13380a09a9278dc68a72fccea7438bc7766cb9c018a6c8c8bd",
    "dota/images/P0001.png": "5541dc73474e42e072d61e78b5ae58bf14f176c36350a8cd6f76c53a2a984de9",
    "dota/images/P0002.png": "a304750c62fa2859b82fea07a34d81f5664ed2a546b1bafea46070928dbeb0c5",
    "dota/labelTxt/P0000.txt": "b614dc35cd935491816b26e78bfc4a79c29d9ccb2c0c03ea93579cea058a4879",
    "dota/labelTxt/P0001.txt": "9504a56fd61809678207288ebde4addee787d331501b3d2db598af54a4f33669",
    "dota/labelTxt/P0002.txt": "c3b5a03c0a7dc0517430f2585a711ced58c378ae7cc6f73b9ea90c4844ae9dfc",
    # rsfm synth potsdam
    "potsdam/2_Ortho_RGB/top_potsdam_2_10_RGB.tif": "20400a4775c6a7105fb347cf1a350d17c8fe0d74d8bb73863a75a5d40d745874",
    "potsdam/2_Ortho_RGB/top_potsdam_2_13_RGB.tif": "2d9072e2c50f8601c6c540127a2bd2ebeaceb5d8fbd38d0f3702cb3138f61c1e",
    "potsdam/3_Ortho_IRRG/top_potsdam_2_10_IRRG.tif": "39cae1b962912dc991f431632f66446ff8242cb1d9d98093c2ea001a8e0dd5a1",
    "potsdam/3_Ortho_IRRG/top_potsdam_2_13_IRRG.tif": "7851376c36785d6fcfdf1bc0b92e49135cf7dcd8b694a68f0cdda8529446cd3e",
    "potsdam/5_Labels_all/top_potsdam_2_10_label.tif": "9cd5f363797540f43b8a9babdd273e551918b343c2931f5396f2ae386d5c4c45",
    "potsdam/5_Labels_all/top_potsdam_2_13_label.tif": "97d29727223aff921b9650dfaff87c6e6a912747c54bba42a3d80f8dfa9e1ee2",
    "potsdam/5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif": "742c3e0e48607d69142505b4f23dc60136e9ca587828f37bc76a73ac161f115d",
    "potsdam/5_Labels_all_noBoundary/top_potsdam_2_13_label_noBoundary.tif": "ffda1b0b153e761d9b2fb41cbbe425973c388de0d6fd2b9a4b4f747b66bceb96",
    # rsfm synth loveda
    "loveda/Test/Rural/images_png/5.png": "d32a2807b710a407ffbd9b8542da325cfdf0f3c049f0f6408cb104d1f982a2e5",
    "loveda/Test/Urban/images_png/4.png": "4033d5f270465362fb7dfc90f34d78a314b06c3e5de051a7a53bd2bb69a167a2",
    "loveda/Train/Rural/images_png/1.png": "210a60e82a3bb71c4b9fe03b515f82ecf34ecea01cb64954e09d7b646e7225e8",
    "loveda/Train/Rural/masks_png/1.png": "a7e38fcb5b71c340ad796609de80a6d520f49c62fbfe50035382ef910caf9107",
    "loveda/Train/Urban/images_png/0.png": "7d4c4845786c8e2aeb39f9162b40a285c889dd5598a07a1116cde4f06c44123e",
    "loveda/Train/Urban/masks_png/0.png": "f4609e5e08286f917540ed503a68972cc4ad6bb123cb1c3aa3d34410f832c732",
    "loveda/Val/Rural/images_png/3.png": "95aa776cf2660003aac32905048f01df7dbe1b95407f613740421465faa58886",
    "loveda/Val/Rural/masks_png/3.png": "fe0c3087104c5523fa08f25a65d2c9637e008ff03a4de3475f3f1fed9db689c6",
    "loveda/Val/Urban/images_png/2.png": "d6373119f96f469debcc00b7db0db9713989dddb49a31509597a2bd6f91cf812",
    "loveda/Val/Urban/masks_png/2.png": "d81690c83c3f8a35ee93f41275e887864b756da9e82b543fe8d826d4b1a91f93",
    # rsfm synth dior
    "dior/Annotations/Oriented Bounding Boxes/00001.xml": "7306dd1b8e360cc1ba23014d08ab581b72bc6ee619467ed9a6d7ea1ade376a3b",
    "dior/Annotations/Oriented Bounding Boxes/00002.xml": "2023da23a4c145f9eb203d9fdf870dbf0c258394b2818ff9ddc788950095e750",
    "dior/Annotations/Oriented Bounding Boxes/00003.xml": "ad24b512227a2f8465f1858e843c4cb34fdbf9d176a3fa59b24df97403f64530",
    "dior/Annotations/Oriented Bounding Boxes/00004.xml": "59eea4e4d8bd9e16c4477b75ef3e92dfb7cd750e0fa668822ce26aad58615890",
    "dior/Annotations/Oriented Bounding Boxes/00005.xml": "2c3b2d417f4193d2b1dc222393abfc52b3ae3c17c788688b89b71ddc0301cc56",
    "dior/ImageSets/Main/test.txt": "26188735c47c65a21cf7dcd83c6e442675d1a6c666e06d4443d7894687df264f",
    "dior/ImageSets/Main/train.txt": "9d2d558dc6a7a981a7b141046fa545ba00a38a70bedc5164e04717dffbf27bc0",
    "dior/ImageSets/Main/val.txt": "818fefa89c4264d559f9b02e73e880024d41b67df30ca464eba03327940baf6a",
    "dior/JPEGImages-test/00005.jpg": "0e65fa3e612725dc9f38698aaeb07b90eabbe7a72eefee2c9c467e1a783f73f9",
    "dior/JPEGImages-trainval/00001.jpg": "7797c21b2bbee86d0998f09bf1607ee40995eb8fae42b877f4266a3e0ba8e52f",
    "dior/JPEGImages-trainval/00002.jpg": "080cabddda45a08338b433b9775b8e4c4c2d14484240e8a47f1a977275c949df",
    "dior/JPEGImages-trainval/00003.jpg": "fd8f76a1382479a1233185170d13f8dea0b5dd232b786696d89b11478519ab53",
    "dior/JPEGImages-trainval/00004.jpg": "aa55250cc3a7e7b96602f81362ef4a4b3f3f1be2a6c59bab95b569edf294356d",
}


def test_downstream_generators_write_the_recorded_bytes(tmp_path):
    synth_dota(tmp_path / "dota", images=3, size=256, seed=0)
    synth_potsdam(tmp_path / "potsdam", tiles=2, size=256, seed=0)
    synth_loveda(tmp_path / "loveda", images=2, size=256, seed=0)
    synth_dior(tmp_path / "dior", images=5, size=256, seed=0)
    written = {p.relative_to(tmp_path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in tmp_path.rglob("*") if p.is_file()}
    assert written == RECORDED_SHA256


def test_every_leaf_class_has_a_layout_and_every_layout_is_used():
    leaves = {path[-1] for path in leaf_paths()}
    assert set(LAYOUTS) == leaves
    assert set(LAYOUTS.values()) == {"airport", "harbour", "tanks", "courts", "parking", "works", "houses",
                                     "urban", "farmland", "forest", "water", "bare"}


# Colour tests in BGR, each true for the object's main body and for none of the ground's colours.
def _light_grey(img):  # plane bodies, tank roofs
    return (img.min(-1) >= 185) & (img.max(-1).astype(int) - img.min(-1) <= 15)


def _court_green(img):
    return (img[..., 1] >= 130) & (img[..., 0] <= 100) & (img[..., 2] <= 80)


def _saturated(img):  # vehicles: the drawer paints HSV saturation 220
    return cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1] >= 180


def _box_mask(shape, box, grow=1.0):
    """Rasterise the rotated box ``(cx, cy, w, h, theta)`` (grown by ``grow``) with its own corner formula."""
    cx, cy, w, h, t = box
    u = np.array([-1, 1, 1, -1]) * w * grow / 2
    v = np.array([-1, -1, 1, 1]) * h * grow / 2
    corners = np.stack([cx + u * np.cos(t) - v * np.sin(t), cy + u * np.sin(t) + v * np.cos(t)], 1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask.astype(bool)


@pytest.mark.parametrize("leaf,kind,colour", [
    ("apron", "plane", _light_grey), ("storage_tank", "storage-tank", _light_grey),
    ("tennis_court", "tennis-court", _court_green), ("parking_lot", "small-vehicle", _saturated)])
def test_object_scenes_draw_their_objects_where_the_record_says(leaf, kind, colour):
    found = 0
    for i in range(10):
        scene = render_scene(np.random.default_rng([7, i]), leaf, 192, 176)
        assert scene.image.shape == (176, 192, 3)
        hits = colour(scene.image)
        clear = np.ones(hits.shape, bool)  # away from every object, its shadow and its water patch
        for _, box in scene.objects:
            clear &= ~_box_mask(hits.shape, box, grow=1.8)
        for k, box in scene.objects:
            if k == kind:
                found += 1
                assert hits[_box_mask(hits.shape, box)].mean() > 0.15, (leaf, i, box)
        assert hits[clear].mean() < 0.03, (leaf, i)
    assert found >= 5


def test_harbour_ships_lie_on_water():
    ships = 0
    for i in range(8):
        scene = render_scene(np.random.default_rng([3, i]), "pier", 192, 192)
        for kind, box in scene.objects:
            if kind == "ship":
                ships += 1
                ring = _box_mask((192, 192), box, grow=2.2) & ~_box_mask((192, 192), box, grow=1.7)
                b, g, r = (scene.image[ring].astype(int).T)
                assert np.mean((b > r + 30) & (b > g)) > 0.6  # mostly blue water around the hull (quay aside)
    assert ships >= 4


def test_land_cover_scenes_carry_their_texture():
    forest = render_scene(np.random.default_rng(0), "forest", 160, 160).image.astype(int)
    water = render_scene(np.random.default_rng(0), "lake", 160, 160).image.astype(int)
    bare = render_scene(np.random.default_rng(0), "desert", 160, 160).image.astype(int)
    assert np.mean(forest[..., 1] > forest[..., 2]) > 0.8  # green over red
    assert np.mean(bare[..., 2] > bare[..., 0] + 20) > 0.8  # sandy: red over blue
    assert np.mean(water[..., 0] > water[..., 2] + 20) > 0.2  # a blue water body


def test_millionaid_is_deterministic_per_seed(tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jpg")}

    synth_millionaid(tmp_path / "a", images=24, seed=3, min_size=64, max_size=128)
    synth_millionaid(tmp_path / "b", images=24, seed=3, min_size=64, max_size=128)
    synth_millionaid(tmp_path / "c", images=24, seed=4, min_size=64, max_size=128)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 24 and a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    for data in a.values():
        h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        assert 64 <= min(h, w) and max(h, w) <= 128
