"""Rotated-box ops against independent truths: shapely geometry, plain-Python greedy NMS,
torchvision's RoIAlign, line-by-line transcriptions of mmcv's RoIAlignRotated kernel and of
mmrotate's coder formulas, and hand-computed cases."""
import math

import numpy as np
import pytest
import shapely
import torch
import torchvision

import rsfm_ds.ops.nms as nms_module
from rsfm_ds.ops import (DeltaXYWHTCoder, MidpointOffsetCoder, batched_nms_rotated, box_area,
                         box_iou_rotated, box_to_polygon, nms_rotated, polygon_iou, polygon_to_box,
                         regularize_le90, roi_align_rotated)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def corners_np(boxes) -> np.ndarray:
    """Independent corner formula in float64 numpy: ``[N, 5] -> [N, 4, 2]``."""
    b = np.asarray(boxes, dtype=np.float64)
    c, w, h, t = b[:, None, :2], b[:, 2, None], b[:, 3, None], b[:, 4, None]
    u = np.stack([np.cos(t), np.sin(t)], -1)
    v = np.stack([-np.sin(t), np.cos(t)], -1)
    sx = np.array([-1, 1, 1, -1])[None, :, None]
    sy = np.array([-1, -1, 1, 1])[None, :, None]
    return c + sx * (w[..., None] / 2) * u + sy * (h[..., None] / 2) * v


def shapely_iou(polys1: np.ndarray, polys2: np.ndarray) -> np.ndarray:
    """IoU of aligned shapely geometries (arrays of polygons)."""
    inter = shapely.area(shapely.intersection(polys1, polys2))
    union = shapely.area(polys1) + shapely.area(polys2) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def same_rectangle(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    """Boxes ``[N, 5]`` describe the same rectangles (corner cycles equal up to rotation)."""
    pa = box_to_polygon(a.double()).view(-1, 4, 2)
    pb = box_to_polygon(b.double()).view(-1, 4, 2)
    err = torch.stack([(pa - pb.roll(s, dims=1)).abs().amax((1, 2)) for s in range(4)]).amin(0)
    return bool((err <= atol).all())


def random_boxes(n: int, gen: torch.Generator, spread: float = 20.0,
                 size=(1.0, 15.0)) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=gen) * spread
    wh = torch.rand(n, 2, generator=gen) * (size[1] - size[0]) + size[0]
    theta = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    return torch.cat([centre, wh, theta], 1)


# ----------------------------------------------------------------------------- conversions

def test_corner_order_and_orientation():
    box = torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.0]])
    assert box_to_polygon(box).tolist() == [[6, 18, 14, 18, 14, 22, 6, 22]]
    quarter = box_to_polygon(torch.tensor([[0.0, 0.0, 8.0, 4.0, math.pi / 2]])).view(4, 2)
    # w-axis along (cos, sin) = +y: the first corner is c - 4 (0, 1) - 2 (-1, 0).
    torch.testing.assert_close(quarter[0], torch.tensor([2.0, -4.0]), atol=1e-6, rtol=0)
    p = box_to_polygon(random_boxes(100, torch.Generator().manual_seed(0))).view(-1, 4, 2)
    shoelace = (p[..., 0] * p.roll(-1, 1)[..., 1] - p.roll(-1, 1)[..., 0] * p[..., 1]).sum(1)
    assert (shoelace > 0).all()


def test_regularize_le90_invariants():
    gen = torch.Generator().manual_seed(1)
    boxes = random_boxes(2000, gen).double()
    boxes[:, 4] *= 7  # angles far outside any canonical range
    boxes[:200, 3] = boxes[:200, 2]  # squares
    boxes[200:300, 4] = torch.tensor([-math.pi / 2, math.pi / 2, 0.0, math.pi, -math.pi]).repeat(20)
    reg = regularize_le90(boxes)
    assert (reg[:, 2] >= reg[:, 3]).all()
    assert ((reg[:, 4] >= -math.pi / 2) & (reg[:, 4] < math.pi / 2)).all()
    assert torch.equal(regularize_le90(reg), reg)
    assert same_rectangle(reg, boxes, atol=1e-9)
    torch.testing.assert_close(box_area(reg), boxes[:, 2] * boxes[:, 3])


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_box_polygon_box_round_trip(dtype, atol):
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(3000, gen, spread=1000.0, size=(2.0, 100.0))
    boxes[:300, 4] = -math.pi / 2 + torch.rand(300, generator=gen) * 1e-4  # le90 lower edge
    boxes[300:600, 4] = math.pi / 2 - torch.rand(300, generator=gen) * 1e-4  # and upper edge
    boxes[600:700, 4] = 0.0
    boxes = regularize_le90(boxes.to(dtype))
    back = polygon_to_box(box_to_polygon(boxes))
    assert back.dtype == dtype
    assert same_rectangle(back, boxes, atol=atol * 100)
    distinct = (boxes[:, 2] - boxes[:, 3]) > 1.0  # away from squares, le90 is unique
    diff = back[distinct] - boxes[distinct]
    diff[:, 4] = torch.remainder(diff[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    assert diff.abs().max() <= atol * 100


def test_polygon_to_box_any_vertex_order():
    gen = torch.Generator().manual_seed(3)
    boxes = regularize_le90(random_boxes(500, gen).double())
    boxes = boxes[(boxes[:, 2] - boxes[:, 3]) > 0.5]
    quads = box_to_polygon(boxes).view(-1, 4, 2)
    for perm in ([3, 2, 1, 0], [0, 2, 1, 3], [1, 3, 0, 2]):  # clockwise on screen, bowties
        got = polygon_to_box(quads[:, perm].reshape(-1, 8))
        diff = got - boxes
        diff[:, 4] = torch.remainder(diff[:, 4] + math.pi / 2, math.pi) - math.pi / 2
        assert diff.abs().max() < 1e-9


def test_polygon_to_box_is_minimum_area_rectangle():
    gen = torch.Generator().manual_seed(4)
    quads = torch.rand(400, 8, generator=gen, dtype=torch.float64) * 50
    quads[:20] = quads[:20, :2].repeat(1, 4)  # all four points equal
    quads[20:40, 4:] = quads[20:40, :4]  # two coincident pairs: a segment
    boxes = polygon_to_box(quads)
    pts = quads.numpy().reshape(-1, 4, 2)
    expected = shapely.area(shapely.oriented_envelope(shapely.multipoints(pts)))
    np.testing.assert_allclose(box_area(boxes).numpy(), expected, atol=1e-7)
    # The rectangle encloses the points: their coordinates in its frame lie within w/2, h/2.
    c, t = boxes[:, None, :2], boxes[:, 4, None]
    rel = quads.view(-1, 4, 2) - c
    along = rel[..., 0] * torch.cos(t) + rel[..., 1] * torch.sin(t)
    across = -rel[..., 0] * torch.sin(t) + rel[..., 1] * torch.cos(t)
    assert (along.abs() <= boxes[:, 2, None] / 2 + 1e-7).all()
    assert (across.abs() <= boxes[:, 3, None] / 2 + 1e-7).all()


# ----------------------------------------------------------------------------- IoU

def iou_pair_cases(gen: torch.Generator):
    """~12k float32 box pairs: overlapping, identical, nested, touching, degenerate, extreme."""
    def rnd(n, lo, hi):
        return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    def boxes(n, spread, lo, hi, offset=0.0):
        return torch.stack([rnd(n, 0, spread) + offset, rnd(n, 0, spread) + offset, rnd(n, lo, hi),
                            rnd(n, lo, hi), rnd(n, -math.pi, math.pi)], 1)

    def shifted(b, along, across):
        """Move b's centre by ``along`` on its w-axis and ``across`` on its h-axis."""
        out = b.clone()
        ct, st = torch.cos(b[:, 4]), torch.sin(b[:, 4])
        out[:, 0] += along * ct - across * st
        out[:, 1] += along * st + across * ct
        return out

    pairs = []
    a = boxes(3000, 20, 1, 15)
    pairs.append((a, boxes(3000, 20, 1, 15)))  # random, mostly overlapping
    a = boxes(1000, 20, 1, 15)
    pairs.append((a, a.clone()))  # identical
    a = boxes(1000, 20, 1, 15)
    b = a.clone()
    b[:, 2:4] *= rnd(1000, 0.1, 0.99)[:, None]
    b[:, 4] += rnd(1000, -0.05, 0.05)
    pairs.append((a, b))  # nested around the centre
    a = boxes(1000, 20, 2, 15)
    b = a.clone()
    b[:, 2] = a[:, 2] * rnd(1000, 0.2, 0.9)
    pairs.append((a, shifted(b, (b[:, 2] - a[:, 2]) / 2, 0.0)))  # nested, sharing an edge
    a = boxes(1000, 20, 1, 15)
    pairs.append((a, shifted(a, a[:, 2], rnd(1000, -3, 3))))  # touching along an edge
    a = boxes(500, 20, 1, 15)
    pairs.append((a, shifted(a, a[:, 2], a[:, 3])))  # touching at a corner
    a = boxes(1000, 20, 1, 15)
    b = boxes(1000, 20, 1, 15)
    b[:300, 2] = 0.0
    b[300:600, 3] = 0.0
    b[600:700, 2:4] = 0.0
    a[700:800, 2] = 0.0
    b[800:1000] = a[800:1000]
    b[800:1000, 3] = 0.0
    pairs.append((a, b))  # degenerate
    a = boxes(1000, 0.02, 1e-3, 1e-2)
    pairs.append((a, boxes(1000, 0.02, 1e-3, 1e-2)))  # tiny
    a = boxes(1000, 1e4, 1e3, 2e4)
    pairs.append((a, boxes(1000, 1e4, 1e3, 2e4)))  # huge
    a = boxes(1000, 30, 2, 20, offset=1.5e4)
    pairs.append((a, boxes(1000, 30, 2, 20, offset=1.5e4)))  # far from the origin
    a = boxes(500, 20, 1e-2, 1)
    pairs.append((a, boxes(500, 20, 1e2, 4e2)))  # tiny against huge
    a = boxes(500, 20, 1, 15)
    pairs.append((a, boxes(500, 20, 1, 15, offset=1e3)))  # far apart
    first = torch.cat([p[0] for p in pairs]).float()
    second = torch.cat([p[1] for p in pairs]).float()
    return first, second


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_rotated_matches_shapely(device):
    first, second = iou_pair_cases(torch.Generator().manual_seed(5))
    assert first.shape[0] >= 10_000
    ours = box_iou_rotated(first.to(device), second.to(device), aligned=True).cpu()
    assert ours.dtype == torch.float32 and not torch.isnan(ours).any()
    truth = shapely_iou(shapely.polygons(corners_np(first.numpy())),
                        shapely.polygons(corners_np(second.numpy())))
    err = np.abs(ours.double().numpy() - truth)
    assert err.max() <= 1e-5, (err.max(), first[err.argmax()], second[err.argmax()])
    # The dense form agrees with the aligned form on a block of the same boxes.
    dense = box_iou_rotated(first[:300].to(device), second[:400].to(device), chunk_size=1000).cpu()
    torch.testing.assert_close(dense.diagonal(), ours[:300], atol=1e-7, rtol=0)
    truth_dense = shapely_iou(shapely.polygons(corners_np(first[:300].numpy()))[:, None],
                              shapely.polygons(corners_np(second[:400].numpy()))[None, :])
    assert np.abs(dense.double().numpy() - truth_dense).max() <= 1e-5


def test_box_iou_special_values():
    box = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.7]])
    empty = torch.tensor([[5.0, 5.0, 0.0, 2.0, 0.7], [5.0, 5.0, 0.0, 0.0, 0.0]])
    assert box_iou_rotated(box, box).item() == pytest.approx(1.0, abs=1e-7)
    zero = box_iou_rotated(torch.cat([box, empty]), torch.cat([box, empty]))
    assert not torch.isnan(zero).any()
    assert (zero[1:, :] == 0).all() and (zero[:, 1:] == 0).all()
    assert box_iou_rotated(box[:0], box).shape == (0, 1)
    assert box_iou_rotated(box, box[:0]).shape == (1, 0)
    assert box_iou_rotated(box[:0], box[:0], aligned=True).shape == (0,)
    assert box_iou_rotated(box.double(), box.double()).dtype == torch.float64
    # Same centre and angle, one box wider: the long sides coincide, IoU = 4 * 5 / (6 * 5).
    # (GEOS 3.14's overlay returns two points for this pair; shapely is no oracle here.)
    theta = 2.4893226811876747
    narrow = torch.tensor([[2.0, 0.0, 4.0, 5.0, theta]], dtype=torch.float64)
    wide = torch.tensor([[2.0, 0.0, 6.0, 5.0, theta]], dtype=torch.float64)
    assert box_iou_rotated(narrow, wide).item() == pytest.approx(2 / 3, abs=1e-12)


def test_box_iou_chunking_does_not_change_results():
    gen = torch.Generator().manual_seed(6)
    a, b = random_boxes(30, gen), random_boxes(20, gen)
    ref = box_iou_rotated(a, b)
    assert (ref > 0).sum() > 100
    for chunk in (3, 64):
        assert torch.equal(box_iou_rotated(a, b, chunk_size=chunk), ref)


def random_convex_quads(n: int, gen: torch.Generator) -> torch.Tensor:
    """Convex quads: four points on a circle in angular order, then a random affine map."""
    angles = torch.sort(torch.rand(n, 4, generator=gen, dtype=torch.float64) * 2 * math.pi).values
    pts = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    affine = torch.randn(n, 2, 2, generator=gen, dtype=torch.float64) * 8
    shift = torch.rand(n, 1, 2, generator=gen, dtype=torch.float64) * 10
    return (pts @ affine + shift).reshape(n, 8)


def test_polygon_iou_matches_shapely_any_vertex_order():
    gen = torch.Generator().manual_seed(7)
    n = 3000
    q1, q2 = random_convex_quads(n, gen), random_convex_quads(n, gen)
    q2[:300] = q1[:300]  # identical
    q1 = q1.view(n, 4, 2)
    q2 = q2.view(n, 4, 2)
    q1[:1000] = q1[:1000].flip(1)  # clockwise on screen
    q2[1000:2000] = q2[1000:2000, [0, 2, 1, 3]]  # self-intersecting order
    q2[2000:2500, 3] = q2[2000:2500, :3].mean(1)  # non-convex: a point inside the triangle
    q1, q2 = q1.reshape(n, 8).float(), q2.reshape(n, 8).float()
    ours = polygon_iou(q1, q2, aligned=True)
    hulls = [shapely.convex_hull(shapely.multipoints(q.double().numpy().reshape(n, 4, 2)))
             for q in (q1, q2)]
    err = np.abs(ours.double().numpy() - shapely_iou(*hulls))
    assert err.max() <= 1e-5, err.max()
    dense = polygon_iou(q1[:50], q2[:60])
    torch.testing.assert_close(dense.diagonal(), ours[:50], atol=1e-7, rtol=0)


def test_polygon_iou_integer_dota_quads():
    quads = torch.tensor([[0, 0, 10, 0, 10, 10, 0, 10], [5, 5, 15, 5, 15, 15, 5, 15],
                          [0, 10, 10, 10, 10, 0, 0, 0]])
    iou = polygon_iou(quads, quads)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[1, 25 / 175, 1], [25 / 175, 1, 25 / 175],
                                                  [1, 25 / 175, 1]]))


# ----------------------------------------------------------------------------- NMS

def greedy_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
                         labels=None) -> list:
    """Sequential greedy NMS with shapely IoU; ties by index."""
    polys = shapely.polygons(corners_np(boxes.numpy()))
    iou = shapely_iou(polys[:, None], polys[None, :])
    near = np.abs(iou - threshold) < 1e-9
    assert not near.any(), "a pair sits on the threshold; the comparison would be ill-posed"
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if all(iou[i, k] <= threshold or (labels is not None and labels[i] != labels[k])
               for k in kept):
            kept.append(i)
    return kept


def clustered_boxes(gen: torch.Generator, n: int, clusters: int) -> torch.Tensor:
    centres = torch.rand(clusters, 2, generator=gen) * 200
    pick = torch.randint(0, clusters, (n,), generator=gen)
    boxes = random_boxes(n, gen, spread=0.0, size=(8.0, 30.0))
    boxes[:, :2] = centres[pick] + torch.randn(n, 2, generator=gen) * 4
    boxes[:, 4] = boxes[:, 4] * 0.2 + (pick.float() * 0.7)  # similar angles within a cluster
    return boxes


@pytest.fixture(params=[512, 16], ids=["one-block", "blocks-of-16"])
def nms_block(request, monkeypatch):
    """Run NMS with its default block size and with small blocks, so that suppression by boxes
    kept in earlier blocks is exercised on small sets."""
    monkeypatch.setattr(nms_module, "_BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,threshold", [(0, 0.1), (1, 0.5), (2, 0.8), (3, 0.3)])
def test_nms_equals_sequential_greedy(device, seed, threshold, nms_block):
    gen = torch.Generator().manual_seed(10 + seed)
    boxes = clustered_boxes(gen, 160, 12)
    scores = torch.randint(0, 6, (160,), generator=gen).float() / 5  # many exact ties
    kept = nms_rotated(boxes.to(device), scores.to(device), threshold)
    assert kept.dtype == torch.int64
    assert kept.cpu().tolist() == greedy_nms_reference(boxes, scores, threshold)


def test_nms_long_suppression_chain(nms_block):
    # Box i overlaps only its neighbours and scores fall along the chain: greedy keeps every
    # other box, and each decision depends on the previous one.
    n = 60
    boxes = torch.stack([torch.arange(n) * 6.0, torch.zeros(n), torch.full((n,), 10.0),
                         torch.full((n,), 4.0), torch.zeros(n)], 1)
    scores = torch.linspace(1, 0, n)
    assert nms_rotated(boxes, scores, 0.2).tolist() == list(range(0, n, 2))
    assert nms_rotated(boxes, scores, 0.2).tolist() == greedy_nms_reference(boxes, scores, 0.2)


def test_nms_edge_cases():
    box = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3]])
    assert nms_rotated(box[:0], torch.zeros(0), 0.5).tolist() == []
    assert nms_rotated(box, torch.ones(1), 0.5).tolist() == [0]
    twins = box.repeat(3, 1)
    assert nms_rotated(twins, torch.ones(3), 0.5).tolist() == [0]  # tie: lowest index wins
    far = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3], [50.0, 5.0, 4.0, 2.0, 0.3]])
    assert nms_rotated(far, torch.tensor([0.2, 0.9]), -0.5).tolist() == [1]  # IoU 0 > -0.5


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_never_crosses_labels(device, nms_block):
    gen = torch.Generator().manual_seed(20)
    boxes = clustered_boxes(gen, 150, 10)
    scores = torch.rand(150, generator=gen)
    labels = torch.randint(0, 3, (150,), generator=gen)
    kept = batched_nms_rotated(boxes.to(device), scores.to(device), labels.to(device), 0.3)
    assert kept.cpu().tolist() == greedy_nms_reference(boxes, scores, 0.3, labels.tolist())
    twins = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3]]).repeat(2, 1)
    assert batched_nms_rotated(twins, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]),
                               0.5).tolist() == [0, 1]


# ----------------------------------------------------------------------------- RoIAlign

def mmcv_roi_align_rotated_reference(features, rois, out_size, scale, sampling_ratio, aligned,
                                     clockwise):
    """Loop transcription of mmcv's roi_align_rotated forward kernel (channels vectorised)."""
    feats = features.double().numpy()
    _, _, height, width = feats.shape
    oh, ow = out_size

    def bilinear(img, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(img.shape[0])
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        return (hy * hx * img[:, y_low, x_low] + hy * lx * img[:, y_low, x_high]
                + ly * hx * img[:, y_high, x_low] + ly * lx * img[:, y_high, x_high])

    out = np.zeros((rois.shape[0], feats.shape[1], oh, ow))
    for n, roi in enumerate(rois.double().numpy()):
        offset = 0.5 if aligned else 0.0
        cx, cy = roi[1] * scale - offset, roi[2] * scale - offset
        rw, rh = roi[3] * scale, roi[4] * scale
        theta = -roi[5] if clockwise else roi[5]
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bin_h, bin_w = rh / oh, rw / ow
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(grid_h * grid_w, 1)
        cos, sin = math.cos(theta), math.sin(theta)
        img = feats[int(roi[0])]
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(feats.shape[1])
                for iy in range(grid_h):
                    yy = -rh / 2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        xx = -rw / 2 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += bilinear(img, yy * cos - xx * sin + cy, yy * sin + xx * cos + cx)
                out[n, :, ph, pw] = acc / count
    return torch.from_numpy(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_theta_zero_equals_torchvision(device, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(30)
    features = torch.randn(2, 5, 20, 24, generator=gen)
    x1 = torch.rand(40, generator=gen) * 56 - 4  # some RoIs cross the image border
    y1 = torch.rand(40, generator=gen) * 46 - 4
    w = torch.rand(40, generator=gen) * 20 + 2
    h = torch.rand(40, generator=gen) * 20 + 2
    batch = torch.randint(0, 2, (40,), generator=gen).float()
    hbox = torch.stack([batch, x1, y1, x1 + w, y1 + h], 1)
    rbox = torch.stack([batch, x1 + w / 2, y1 + h / 2, w, h, torch.zeros(40)], 1)
    expected = torchvision.ops.roi_align(features, hbox, (7, 6), 0.5, sampling_ratio, aligned)
    for clockwise in (False, True):
        got = roi_align_rotated(features.to(device), rbox.to(device), (7, 6), 0.5,
                                sampling_ratio, aligned, clockwise).cpu()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("clockwise", [True, False])
def test_roi_align_quarter_turn_matches_rotated_feature_map(clockwise):
    gen = torch.Generator().manual_seed(31)
    features = torch.randn(1, 3, 18, 22, generator=gen, dtype=torch.float64)
    width = features.shape[-1]
    rois = torch.tensor([[0, 11.0, 9.0, 8.0, 5.0, 0.3], [0, 10.0, 8.0, 6.0, 6.0, -1.1],
                         [0, 12.5, 9.5, 9.0, 3.0, 1.4]], dtype=torch.float64)
    # torch.rot90(k=1) maps pixel-space point (x, y) to (y, W - x) and turns every direction
    # by a quarter turn, so the RoI's angle moves by a quarter turn (its sign per convention).
    rotated = torch.rot90(features, 1, dims=(2, 3))
    turn = -math.pi / 2 if clockwise else math.pi / 2
    rois_rot = torch.stack([rois[:, 0], rois[:, 2], width - rois[:, 1], rois[:, 3], rois[:, 4],
                            rois[:, 5] + turn], 1)
    a = roi_align_rotated(features, rois, 4, 1.0, 2, True, clockwise)
    b = roi_align_rotated(rotated, rois_rot, 4, 1.0, 2, True, clockwise)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("aligned,clockwise,sampling_ratio", [
    (True, False, 2), (True, True, 0), (False, False, 0), (False, True, 3)])
def test_roi_align_matches_mmcv_kernel_transcription(aligned, clockwise, sampling_ratio):
    gen = torch.Generator().manual_seed(32)
    features = torch.randn(2, 3, 12, 14, generator=gen)
    n = 8
    def uniform(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    rois = torch.stack([torch.randint(0, 2, (n,), generator=gen).float(), uniform(-2, 30),
                        uniform(-2, 26), uniform(0.5, 14.5), uniform(0.5, 14.5),
                        uniform(-math.pi, math.pi)], 1)
    got = roi_align_rotated(features, rois, (3, 4), 0.5, sampling_ratio, aligned, clockwise)
    expected = mmcv_roi_align_rotated_reference(features, rois, (3, 4), 0.5, sampling_ratio,
                                                aligned, clockwise)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_roi_align_gradients():
    gen = torch.Generator().manual_seed(33)
    features = torch.randn(2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.0, 3.0, 4.0, 3.0, 0.4], [1, 4.0, 2.5, 5.0, 2.0, -0.9],
                         [1, 6.5, 5.5, 3.0, 3.0, 2.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: roi_align_rotated(f, rois, 2, 1.0, 2, True, True), (features,))
    roi_align_rotated(features, rois, 2, 1.0, 2).sum().backward()
    assert features.grad.abs().sum() > 0


def test_roi_align_empty_rois():
    out = roi_align_rotated(torch.randn(1, 4, 8, 8), torch.zeros(0, 6), 7)
    assert out.shape == (0, 4, 7, 7)


# ----------------------------------------------------------------------------- coders

def coder_targets(gen: torch.Generator, n: int) -> torch.Tensor:
    boxes = random_boxes(n, gen, spread=200.0, size=(4.0, 120.0)).double()
    edge = torch.tensor([-math.pi / 2, -math.pi / 2 + 1e-6, math.pi / 2 - 1e-6, 0.0, 1e-7,
                         math.pi / 4, -math.pi / 4])
    boxes[:140, 4] = edge.repeat(20).double()
    boxes[140:200, 3] = boxes[140:200, 2] * (1 + 1e-6)  # w ~ h
    boxes[200:230, 3] = boxes[200:230, 2]  # squares
    return regularize_le90(boxes)


def test_midpoint_offset_round_trip():
    gen = torch.Generator().manual_seed(40)
    gts = coder_targets(gen, 1000)
    anchors = torch.cat([gts[:, :2] - 30, gts[:, :2] + torch.rand(1000, 2, generator=gen) * 60], 1)
    exact = MidpointOffsetCoder(tie_tolerance=0.0)
    deltas = exact.encode(anchors, gts)
    assert deltas.shape == (1000, 6)
    decoded = exact.decode(anchors, deltas)
    assert same_rectangle(decoded, gts, atol=1e-6)
    assert (decoded[:, 2] >= decoded[:, 3]).all()
    # The default 1e-3 px tie tolerance moves near-axis-aligned targets by at most
    # (long side / short side) * 1e-3 px.
    default = MidpointOffsetCoder()
    assert same_rectangle(default.decode(anchors, default.encode(anchors, gts)), gts, atol=0.05)


def mmrotate_midpoint_encode(anchors, gts):
    """Transcription of mmrotate 1.x ``midpoint_offset`` ``bbox2delta`` (means 0, stds 1)."""
    px, py = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    poly = torch.from_numpy(corners_np(gts.numpy())).reshape(-1, 8)
    x_coor, y_coor = poly[:, 0::2], poly[:, 1::2]
    gx, gy = (x_coor.amin(1) + x_coor.amax(1)) / 2, (y_coor.amin(1) + y_coor.amax(1)) / 2
    gw, gh = x_coor.amax(1) - x_coor.amin(1), y_coor.amax(1) - y_coor.amin(1)
    y_min, x_max = y_coor.amin(1, keepdim=True), x_coor.amax(1, keepdim=True)
    ga = torch.where((y_coor - y_min).abs() > 0.1, -1000.0, x_coor).amax(1)
    gb = torch.where((x_coor - x_max).abs() > 0.1, -1000.0, y_coor).amax(1)
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph),
                        (ga - gx) / gw, (gb - gy) / gh], 1)


def mmrotate_midpoint_decode_polygon(anchors, deltas):
    """Transcription of mmrotate 1.x ``midpoint_offset`` ``delta2bbox`` up to the rectangle
    polygon (mmrotate then converts it with cv2.minAreaRect)."""
    dx, dy, dw, dh, da, db = deltas.unbind(1)
    max_ratio = abs(math.log(16 / 1000))
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    px, py = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1, x2, y2 = gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2
    da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
    polys = torch.stack([gx + da * gw, y1, x2, gy + db * gh, gx - da * gw, y2, x1, gy - db * gh],
                        -1)
    center = torch.stack([gx, gy] * 4, -1)
    center_polys = polys - center
    diag_len = torch.sqrt(center_polys[:, 0::2] ** 2 + center_polys[:, 1::2] ** 2)
    scale = diag_len.amax(-1, keepdim=True) / diag_len
    return (center_polys * scale.repeat_interleave(2, -1) + center).view(-1, 4, 2)


def test_midpoint_offset_matches_mmrotate_formulas():
    gen = torch.Generator().manual_seed(42)
    gts = coder_targets(gen, 600)
    # mmrotate ties corners within 0.1 px of the top (right); keep targets clear of such ties,
    # where the two tie rules legitimately differ (see MidpointOffsetCoder).
    corners = torch.from_numpy(corners_np(gts.numpy()))
    ys, xs = corners[..., 1].sort(1).values, corners[..., 0].sort(1).values
    gts = gts[(ys[:, 1] - ys[:, 0] > 0.2) & (xs[:, 3] - xs[:, 2] > 0.2)]
    n = gts.shape[0]
    anchors = torch.cat([gts[:, :2] - 30, gts[:, :2] + torch.rand(n, 2, generator=gen) * 60], 1)
    coder = MidpointOffsetCoder(target_stds=(1.0,) * 6)
    torch.testing.assert_close(coder.encode(anchors, gts), mmrotate_midpoint_encode(anchors, gts))
    deltas = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 0.4
    ours = box_to_polygon(coder.decode(anchors, deltas)).view(-1, 4, 2)
    ref = mmrotate_midpoint_decode_polygon(anchors, deltas)
    err = torch.stack([(ours - ref.roll(s, 1)).abs().amax((1, 2)) for s in range(4)]).amin(0)
    assert err.max() < 1e-9


def test_midpoint_offset_hand_case():
    coder = MidpointOffsetCoder(target_stds=(1.0,) * 6)
    anchor = torch.tensor([[0.0, 0.0, 20.0, 10.0]])
    horizontal = torch.tensor([[12.0, 6.0, 8.0, 4.0, 0.0]])  # bounds (8, 4)-(16, 8)
    torch.testing.assert_close(
        coder.encode(anchor, horizontal),
        torch.tensor([[0.1, 0.1, math.log(0.4), math.log(0.4), 0.5, 0.5]]))
    # A square turned by 45 degrees: top vertex straight above the centre, right vertex level.
    diamond = torch.tensor([[10.0, 5.0, 4.0, 4.0, math.pi / 4]])
    assert coder.encode(anchor, diamond)[0, 4:].abs().max() < 1e-6
    # Out-of-range deltas are clamped: |dw|, |dh| <= log(1000 / 16), |da|, |db| <= 0.5.
    wild = coder.decode(anchor, torch.tensor([[0.0, 0.0, 50.0, -50.0, 3.0, 3.0]]))
    torch.testing.assert_close(wild, torch.tensor([[10.0, 5.0, 1250.0, 0.16, 0.0]]))
    # da = -db = 0.5 puts the top and right vertices on one corner: the rectangle collapses to
    # the anchor's diagonal from (20, 0) to (0, 10).
    flat = coder.decode(anchor, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, -0.5]]))
    torch.testing.assert_close(flat, torch.tensor([[10.0, 5.0, math.sqrt(500), 0.0,
                                                    math.atan2(-10, 20)]]))


def test_delta_xywht_round_trip_and_angle_range():
    gen = torch.Generator().manual_seed(41)
    gts = coder_targets(gen, 1000)
    proposals = gts.clone()
    proposals[:, :2] += torch.randn(1000, 2, generator=gen, dtype=torch.float64) * 5
    proposals[:, 2:4] *= torch.rand(1000, 2, generator=gen, dtype=torch.float64) + 0.5
    proposals[:, 4] += torch.randn(1000, generator=gen, dtype=torch.float64)
    proposals = regularize_le90(proposals)
    coder = DeltaXYWHTCoder()
    deltas = coder.encode(proposals, gts)
    raw_dt = deltas[:, 4] * 0.1
    assert raw_dt.abs().max() <= math.pi / 4 + 1e-9
    decoded = coder.decode(proposals, deltas)
    assert same_rectangle(decoded, gts, atol=1e-6)
    assert (decoded[:, 2] >= decoded[:, 3]).all()
    assert ((decoded[:, 4] >= -math.pi / 2) & (decoded[:, 4] < math.pi / 2)).all()


def test_delta_xywht_matches_mmrotate_formulas():
    """Against a transcription of mmrotate 1.x ``delta_xywht_rbbox`` with the le90 Oriented
    R-CNN options (edge_swap=True, proj_xy=True)."""
    gen = torch.Generator().manual_seed(43)
    gts = coder_targets(gen, 500)
    proposals = regularize_le90(random_boxes(500, gen, spread=200.0, size=(4.0, 120.0)).double())
    px, py, pw, ph, pt = proposals.unbind(1)
    gx, gy, gw, gh, gt = gts.unbind(1)

    def norm(a):
        return (a + math.pi / 2) % math.pi - math.pi / 2

    dx = (torch.cos(pt) * (gx - px) + torch.sin(pt) * (gy - py)) / pw
    dy = (-torch.sin(pt) * (gx - px) + torch.cos(pt) * (gy - py)) / ph
    dt1, dt2 = norm(gt - pt), norm(gt - pt + math.pi / 2)
    same = dt1.abs() < dt2.abs()
    expected = torch.stack([dx, dy, torch.log(torch.where(same, gw, gh) / pw),
                            torch.log(torch.where(same, gh, gw) / ph),
                            torch.where(same, dt1, dt2)], 1)
    coder = DeltaXYWHTCoder(target_stds=(1.0,) * 5)
    torch.testing.assert_close(coder.encode(proposals, gts), expected)

    deltas = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    dx, dy, dw, dh, dt = deltas.unbind(1)
    max_ratio = abs(math.log(16 / 1000))
    ref = torch.stack([dx * pw * torch.cos(pt) - dy * ph * torch.sin(pt) + px,
                       dx * pw * torch.sin(pt) + dy * ph * torch.cos(pt) + py,
                       pw * dw.clamp(-max_ratio, max_ratio).exp(),
                       ph * dh.clamp(-max_ratio, max_ratio).exp(), norm(pt + dt)], 1)
    assert same_rectangle(coder.decode(proposals, deltas), ref, atol=1e-9)


def test_delta_xywht_hand_cases():
    coder = DeltaXYWHTCoder(target_stds=(1.0,) * 5)
    proposal = torch.tensor([[10.0, 10.0, 8.0, 4.0, math.pi / 6]])
    # One proposal width along its own w-axis is dx = 1, dy = 0, whatever the angle.
    moved = proposal.clone()
    moved[0, 0] += 8 * math.cos(math.pi / 6)
    moved[0, 1] += 8 * math.sin(math.pi / 6)
    torch.testing.assert_close(coder.encode(proposal, moved), torch.tensor([[1.0, 0, 0, 0, 0]]))
    # The same rectangle written with w and h swapped encodes to the same zero deltas.
    swapped = torch.tensor([[10.0, 10.0, 4.0, 8.0, math.pi / 6 + math.pi / 2]])
    torch.testing.assert_close(coder.encode(proposal, swapped), torch.zeros(1, 5), atol=1e-6,
                               rtol=0)
    clamped = coder.decode(proposal, torch.tensor([[0.0, 0.0, 100.0, 0.0, 0.0]]))
    torch.testing.assert_close(clamped[0, 2], torch.tensor(8.0 * 1000 / 16))
    inside = coder.decode(proposal, torch.tensor([[100.0, 0.0, 0.0, 0.0, 0.0]]), max_shape=(50, 60))
    assert inside[0, 0] == 59 and 0 <= inside[0, 1] <= 49
