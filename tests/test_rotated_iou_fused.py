"""The fused CPU rotated-IoU kernel against the plain torch path and against shapely.

Both paths are run on the same inputs by setting ``RSFM_ROTATED_OPS``; the sets are the
generators of test_rotated_ops.py (random, identical, nested, touching, degenerate, tiny, huge,
far from the origin). The kernel is built once per session by the ``fused`` fixture (first build:
about 20 s of compiler CPU time, cached afterwards in the torch extensions directory), so no test
pays for it.
"""
import math
import warnings

import numpy as np
import pytest
import shapely
import torch

from rsfm_ds.data.det.dota import Detections
from rsfm_ds.data.det.merge import nms_per_image
from rsfm_ds.errors import ConfigError
from rsfm_ds.evaluation.rotated_map import evaluate_class
from rsfm_ds.ops import (batched_nms_rotated, box_iou_rotated, box_to_polygon, nms_rotated,
                         polygon_iou)
from rsfm_ds.ops import rotated_iou_fused
from test_rotated_ops import (clustered_boxes, corners_np, greedy_nms_reference, iou_pair_cases,
                              random_boxes, random_convex_quads, shapely_iou)

ENV = rotated_iou_fused.ENV_VAR


@pytest.fixture(scope="session")
def fused_kernel():
    """Build (or load from the cache) the kernel once; skip where no compiler is available."""
    try:
        return rotated_iou_fused.load_kernel()
    except RuntimeError as exc:
        pytest.skip(f"fused kernel unavailable here: {exc}")


@pytest.fixture
def both_paths(fused_kernel, monkeypatch):
    """``run(fn)`` -> ``(plain result, fused result)``, each with its path forced."""
    def run(fn):
        out = []
        for name in ("plain", "fused"):
            monkeypatch.setenv(ENV, name)
            out.append(fn())
        monkeypatch.delenv(ENV)
        return out
    return run


def shapely_iof(polys1: np.ndarray, polys2: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(polys1, polys2))
    area = shapely.area(polys1)
    return np.where(area > 0, inter / np.where(area > 0, area, 1), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_plain_and_shapely_on_pair_cases(both_paths, dtype):
    first, second = (x.to(dtype) for x in iou_pair_cases(torch.Generator().manual_seed(5)))
    plain, fused = both_paths(lambda: box_iou_rotated(first, second, aligned=True))
    assert fused.dtype == dtype and not torch.isnan(fused).any()
    assert (fused - plain).abs().max().item() <= 1e-6
    truth = shapely_iou(shapely.polygons(corners_np(first.double().numpy())),
                        shapely.polygons(corners_np(second.double().numpy())))
    # 1e-5 as test_rotated_ops: shapely itself is off on a few pairs with coinciding edges.
    assert np.abs(fused.double().numpy() - truth).max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_dense_matrix_equals_plain(both_paths, dtype):
    first, second = (x.to(dtype) for x in iou_pair_cases(torch.Generator().manual_seed(8)))
    # A mix of the degenerate and extreme cases, and sets that overlap a lot (random_boxes).
    rows = torch.cat([first[::97], random_boxes(120, torch.Generator().manual_seed(1)).to(dtype)])
    cols = torch.cat([second[::89], random_boxes(100, torch.Generator().manual_seed(2)).to(dtype)])
    plain, fused = both_paths(lambda: box_iou_rotated(rows, cols))
    assert fused.shape == (len(rows), len(cols)) and fused.dtype == dtype
    assert (plain > 0).sum() > 2000
    assert (fused - plain).abs().max().item() <= 1e-6
    truth = shapely_iou(shapely.polygons(corners_np(rows.double().numpy()))[:, None],
                        shapely.polygons(corners_np(cols.double().numpy()))[None, :])
    assert np.abs(fused.double().numpy() - truth).max() <= 1e-5


def test_fused_polygon_iou_any_vertex_order(both_paths):
    gen = torch.Generator().manual_seed(7)
    n = 2000
    q1, q2 = random_convex_quads(n, gen).view(n, 4, 2), random_convex_quads(n, gen).view(n, 4, 2)
    q2[:200] = q1[:200]  # identical
    q1[:700] = q1[:700].flip(1)  # clockwise on screen
    q2[700:1400] = q2[700:1400, [0, 2, 1, 3]]  # self-intersecting order
    q2[1400:1700, 3] = q2[1400:1700, :3].mean(1)  # non-convex: a point inside the triangle
    q1, q2 = q1.reshape(n, 8), q2.reshape(n, 8)
    (plain, plain_dense), (fused, fused_dense) = both_paths(
        lambda: (polygon_iou(q1, q2, aligned=True), polygon_iou(q1[:80], q2[:90])))
    assert (fused - plain).abs().max().item() <= 1e-6
    assert (fused_dense - plain_dense).abs().max().item() <= 1e-6
    hulls = [shapely.convex_hull(shapely.multipoints(q.numpy().reshape(n, 4, 2))) for q in (q1, q2)]
    assert np.abs(fused.numpy() - shapely_iou(*hulls)).max() <= 1e-6


def test_iof_mode_matches_shapely(both_paths):
    gen = torch.Generator().manual_seed(11)
    a = random_boxes(150, gen).double()
    b = random_boxes(120, gen).double()
    b[:40, 2] = 0.0  # zero-area second boxes: IoF 0
    a[:30, 3] = 0.0  # zero-area first boxes: IoF 0, not NaN
    b[40:80] = a[40:80] * torch.tensor([1, 1, 0.5, 0.5, 1], dtype=torch.float64)  # nested: IoF 1/4
    (plain, plain_aligned), (fused, fused_aligned) = both_paths(
        lambda: (box_iou_rotated(a, b, mode="iof"),
                 box_iou_rotated(a[:120], b, aligned=True, mode="iof")))
    pa = shapely.polygons(corners_np(a.numpy()))
    pb = shapely.polygons(corners_np(b.numpy()))
    truth = shapely_iof(pa[:, None], pb[None, :])
    for ours in (plain, fused):
        assert not torch.isnan(ours).any()
        assert np.abs(ours.numpy() - truth).max() <= 1e-9
    assert (fused_aligned - plain_aligned).abs().max().item() <= 1e-12
    np.testing.assert_allclose(fused_aligned[40:80].numpy(), 0.25, atol=1e-12)
    assert (fused[:30] == 0).all() and (fused[:, :40] == 0).all()
    # IoF is not symmetric: the nested box covers a quarter of the outer one but all of itself.
    swapped = box_iou_rotated(b[40:80], a[40:80], aligned=True, mode="iof")
    np.testing.assert_allclose(swapped.numpy(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="mode"):
        box_iou_rotated(a, b, mode="giou")


def test_special_values_and_empty_inputs(both_paths):
    box = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.7]])
    empty = torch.tensor([[5.0, 5.0, 0.0, 2.0, 0.7], [5.0, 5.0, 0.0, 0.0, 0.0]])
    theta = 2.4893226811876747
    narrow = torch.tensor([[2.0, 0.0, 4.0, 5.0, theta]], dtype=torch.float64)
    wide = torch.tensor([[2.0, 0.0, 6.0, 5.0, theta]], dtype=torch.float64)
    quads = torch.tensor([[0, 0, 10, 0, 10, 10, 0, 10], [5, 5, 15, 5, 15, 15, 5, 15]])

    def cases():
        both = torch.cat([box, empty])
        return (box_iou_rotated(box, box), box_iou_rotated(both, both),
                box_iou_rotated(box[:0], box), box_iou_rotated(box, box[:0]),
                box_iou_rotated(box[:0], box[:0], aligned=True), box_iou_rotated(narrow, wide),
                polygon_iou(quads, quads), box_iou_rotated(box.half(), box.half()))

    for same, iou_both, e1, e2, e3, coinciding, integer, half in both_paths(cases):
        assert same.item() == pytest.approx(1.0, abs=1e-7)
        assert not torch.isnan(iou_both).any()
        assert (iou_both[1:, :] == 0).all() and (iou_both[:, 1:] == 0).all()
        assert e1.shape == (0, 1) and e2.shape == (1, 0) and e3.shape == (0,)
        # The long sides coincide: IoU = 4 * 5 / (6 * 5) (hand-computed).
        assert coinciding.dtype == torch.float64
        assert coinciding.item() == pytest.approx(2 / 3, abs=1e-12)
        assert integer.dtype == torch.float32
        torch.testing.assert_close(integer, torch.tensor([[1, 25 / 175], [25 / 175, 1]]))
        assert half.dtype == torch.float16 and half.item() == 1.0


@pytest.mark.parametrize("seed,threshold", [(0, 0.1), (1, 0.5), (2, 0.8), (3, 0.3)])
def test_nms_same_with_either_path(both_paths, seed, threshold):
    gen = torch.Generator().manual_seed(10 + seed)
    boxes = clustered_boxes(gen, 200, 12)
    scores = torch.randint(0, 6, (200,), generator=gen).float() / 5  # many exact ties
    labels = torch.randint(0, 3, (200,), generator=gen)
    plain, fused = both_paths(lambda: (nms_rotated(boxes, scores, threshold).tolist(),
                                       batched_nms_rotated(boxes, scores, labels,
                                                           threshold).tolist()))
    assert fused == plain
    assert fused[0] == greedy_nms_reference(boxes, scores, threshold)
    assert fused[1] == greedy_nms_reference(boxes, scores, threshold, labels.tolist())


def test_nms_edge_cases_with_either_path(both_paths):
    box = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3]])
    far = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3], [50.0, 5.0, 4.0, 2.0, 0.3]])
    chain = torch.stack([torch.arange(60) * 6.0, torch.zeros(60), torch.full((60,), 10.0),
                         torch.full((60,), 4.0), torch.zeros(60)], 1)

    def cases():
        return (nms_rotated(box[:0], torch.zeros(0), 0.5).tolist(),
                nms_rotated(box.repeat(3, 1), torch.ones(3), 0.5).tolist(),
                nms_rotated(far, torch.tensor([0.2, 0.9]), -0.5).tolist(),
                nms_rotated(chain, torch.linspace(1, 0, 60), 0.2).tolist(),
                batched_nms_rotated(box.repeat(2, 1), torch.tensor([0.9, 0.8]),
                                    torch.tensor([0, 1]), 0.5).tolist())

    plain, fused = both_paths(cases)
    assert fused == plain
    # Hand-derived: nothing; lowest index of tied twins; IoU 0 > -0.5 suppresses the far box;
    # a chain of neighbours keeps every other box; different labels never suppress.
    assert list(fused) == [[], [0], [1], list(range(0, 60, 2)), [0, 1]]


def test_merge_and_evaluation_same_with_either_path(both_paths):
    gen = torch.Generator().manual_seed(30)
    boxes = clustered_boxes(gen, 400, 20)
    polys = box_to_polygon(boxes.double()).numpy()
    image_ids = np.array([f"P{i % 3:04d}" for i in range(400)])
    dets = Detections(image_ids, torch.rand(400, generator=gen).double().numpy(), polys)
    gts = {f"P{i:04d}": (polys[i::7][:20] + 0.5, np.zeros(len(polys[i::7][:20]), dtype=bool))
           for i in range(3)}

    def run():
        merged = nms_per_image(dets, 0.1)
        result = evaluate_class(dets, gts)
        return merged.image_ids.tolist(), merged.scores.tolist(), result.ap, result.tp.tolist()

    plain, fused = both_paths(run)
    assert fused == plain
    assert 0 < len(fused[0]) < 400
    assert 0 < sum(fused[3]) < 400  # some detections match an object, some do not


def test_selection_rules(fused_kernel, monkeypatch):
    cpu, meta = torch.device("cpu"), torch.device("meta")
    monkeypatch.delenv(ENV, raising=False)
    assert rotated_iou_fused.select_kernel(cpu) is fused_kernel
    assert rotated_iou_fused.select_kernel(meta) is None
    monkeypatch.setenv(ENV, "plain")
    assert rotated_iou_fused.select_kernel(cpu) is None
    monkeypatch.setenv(ENV, "Fused")
    assert rotated_iou_fused.select_kernel(cpu) is fused_kernel
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ConfigError, match=ENV):
        box_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))


def test_inputs_that_require_grad_give_the_same_values(fused_kernel, monkeypatch):
    # Neither path is differentiable (every caller runs under no_grad); the fused path just
    # reads the values.
    monkeypatch.setenv(ENV, "fused")
    gen = torch.Generator().manual_seed(12)
    a = random_boxes(20, gen).double().requires_grad_()
    b = random_boxes(30, gen).double()
    with torch.no_grad():
        expected = box_iou_rotated(a, b)
    assert torch.equal(box_iou_rotated(a, b), expected)


def test_build_failure_warns_once_then_plain(fused_kernel, monkeypatch, tmp_path):
    gen = torch.Generator().manual_seed(13)
    a, b = random_boxes(40, gen), random_boxes(50, gen)
    monkeypatch.setenv(ENV, "plain")
    expected = box_iou_rotated(a, b)
    monkeypatch.setattr(rotated_iou_fused, "SOURCE", tmp_path / "missing.cpp")
    monkeypatch.setattr(rotated_iou_fused, "_module", None)
    monkeypatch.setattr(rotated_iou_fused, "_failure", None)
    monkeypatch.delenv(ENV)
    with pytest.warns(RuntimeWarning, match="plain torch path"):
        first = box_iou_rotated(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = box_iou_rotated(a, b)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    monkeypatch.setenv(ENV, "fused")  # forced: the failure is an error, not a fallback
    with pytest.raises(RuntimeError, match="building the fused rotated-IoU kernel failed"):
        box_iou_rotated(a, b)


def test_large_dense_and_sparse_sets(both_paths):
    """The bench's two layouts at a size a test can afford: dense (all pairs overlap) and sparse."""
    gen = torch.Generator().manual_seed(14)
    n = 120
    theta = (torch.rand(n, generator=gen) - 0.5) * math.pi
    dense = torch.stack([torch.rand(n, generator=gen) * 8 - 4, torch.rand(n, generator=gen) * 8 - 4,
                         torch.rand(n, generator=gen) * 40 + 20,
                         torch.rand(n, generator=gen) * 40 + 20, theta], 1).double()
    sparse = dense.clone()
    sparse[:, :2] = torch.rand(n, 2, generator=gen) * 1024
    for boxes in (dense, sparse):
        plain, fused = both_paths(lambda: box_iou_rotated(boxes, boxes))
        assert (fused - plain).abs().max().item() <= 1e-9
        polys = shapely.polygons(corners_np(boxes.numpy()))
        truth = shapely_iou(polys[:, None], polys[None, :])
        assert np.abs(fused.numpy() - truth).max() <= 1e-9
    assert (box_iou_rotated(dense, dense) > 0).all()
