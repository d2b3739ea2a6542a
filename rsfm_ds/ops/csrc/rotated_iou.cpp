// Fused CPU kernel for the IoU of convex quadrilaterals (rsfm_ds/ops/rotated_iou_fused.py).
//
// Inputs are the prepared sets of rsfm_ds/ops/polygon_iou.py (ConvexSet): the subject rows
// [N, 9] (x0..x3, y0..y3, area) and the clip rows [M, 13] (unit edge directions dx0..3, dy0..3,
// edge offsets, area), float64, contiguous. Per pair the subject quad is clipped against the
// four edge half-planes of the clip quad (Sutherland-Hodgman) and the intersection area is the
// shoelace sum of the result. The conventions are the plain path's, so both agree to rounding:
//   * a point is inside edge j when dx_j * y - dy_j * x - offset_j >= -tol (points within tol
//     of a line count as on it, so shared and touching edges clip cleanly);
//   * a degenerate edge has direction 0 and offset 0, so it constrains nothing;
//   * the intersection is clamped to [0, min(area_a, area_b)];
//   * mode 0 (IoU): inter / (area_a + area_b - inter), 0 where the union is 0;
//     mode 1 (IoF, mmcv's box_iou_rotated mode "iof"): inter / area_a, 0 where area_a is 0.
// Pairs are spread over threads with at::parallel_for (OpenMP in torch's CPU builds), so the
// kernel follows torch.set_num_threads.
// ATen and the pybind glue only (not torch/extension.h, which pulls in torch::nn and autograd):
// about a third less compile time on the first build.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kSubject = 9;
constexpr int kClip = 13;
// Each half-plane clip of an n-gon yields at most 2n vertices (one per kept vertex plus one per
// crossing), so four clips of a quad stay within 4 * 2^4 = 64 even when rounding makes the chain
// cross a line more often than a convex polygon can.
constexpr int kMaxVerts = 64;

// Area of (subject quad) ∩ (clip quad).
inline double intersection_area(const double* s, const double* c, double tol) {
  double bx[2][kMaxVerts], by[2][kMaxVerts], f[kMaxVerts];
  int n = 4;
  for (int i = 0; i < 4; ++i) {
    bx[0][i] = s[i];
    by[0][i] = s[4 + i];
  }
  int cur = 0;
  for (int j = 0; j < 4; ++j) {
    const double dx = c[j], dy = c[4 + j], off = c[8 + j];
    const double* px = bx[cur];
    const double* py = by[cur];
    double* qx = bx[1 - cur];
    double* qy = by[1 - cur];
    for (int i = 0; i < n; ++i) f[i] = dx * py[i] - dy * px[i] - off;
    int m = 0;
    for (int i = 0; i < n; ++i) {
      const int k = (i + 1 == n) ? 0 : i + 1;
      const bool in_i = f[i] >= -tol;
      const bool in_k = f[k] >= -tol;
      if (in_i) {
        qx[m] = px[i];
        qy[m] = py[i];
        ++m;
      }
      if (in_i != in_k) {
        // One endpoint may lie inside only by the tolerance, so t can stray just outside [0, 1].
        const double t = std::min(1.0, std::max(0.0, f[i] / (f[i] - f[k])));
        qx[m] = px[i] + t * (px[k] - px[i]);
        qy[m] = py[i] + t * (py[k] - py[i]);
        ++m;
      }
    }
    n = m;
    cur = 1 - cur;
    if (n < 3) return 0.0;
  }
  const double* px = bx[cur];
  const double* py = by[cur];
  double twice = 0.0;
  for (int i = 0; i < n; ++i) {
    const int k = (i + 1 == n) ? 0 : i + 1;
    twice += px[i] * py[k] - py[i] * px[k];
  }
  return 0.5 * twice;
}

inline double overlap_ratio(const double* s, const double* c, double tol, int64_t mode) {
  const double area_a = s[8], area_b = c[12];
  double inter = intersection_area(s, c, tol);
  inter = std::min(std::max(inter, 0.0), std::min(area_a, area_b));
  if (mode == 1) return area_a > 0 ? inter / area_a : 0.0;
  const double uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0;
}

void check_sets(const at::Tensor& subject, const at::Tensor& clip) {
  TORCH_CHECK(subject.device().is_cpu() && clip.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(subject.scalar_type() == at::kDouble && clip.scalar_type() == at::kDouble,
              "float64 sets expected");
  TORCH_CHECK(subject.dim() == 2 && subject.size(1) == kSubject && subject.is_contiguous(),
              "subject must be contiguous [N, 9]");
  TORCH_CHECK(clip.dim() == 2 && clip.size(1) == kClip && clip.is_contiguous(),
              "clip must be contiguous [M, 13]");
}

// Grain of at::parallel_for in pairs: large enough that thread start-up is paid rarely.
constexpr int64_t kGrainPairs = 1 << 12;

template <typename out_t>
void matrix_impl(const double* sub, const double* clp, const double* box_a, const double* box_b,
                 int64_t n, int64_t m, double tol, int64_t mode, bool prune, out_t* out) {
  const int64_t grain = std::max<int64_t>(1, kGrainPairs / std::max<int64_t>(m, 1));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* s = sub + r * kSubject;
      const double* ba = box_a + r * 4;
      out_t* row = out + r * m;
      for (int64_t col = 0; col < m; ++col) {
        const double* bb = box_b + col * 4;
        // Closed bounds that do not meet: IoU 0 without clipping (the candidate filter).
        if (prune && (ba[0] > bb[2] || bb[0] > ba[2] || ba[1] > bb[3] || bb[1] > ba[3])) {
          row[col] = 0;
          continue;
        }
        row[col] = static_cast<out_t>(overlap_ratio(s, clp + col * kClip, tol, mode));
      }
    }
  });
}

}  // namespace

// Dense [N, M] overlaps written into `out` (float32 or float64). `aabb_a` [N, 4] and `aabb_b`
// [M, 4] hold (x_min, y_min, x_max, y_max); with `prune`, pairs whose bounds are disjoint are
// written as 0 without clipping.
void overlap_matrix(const at::Tensor& subject, const at::Tensor& clip, const at::Tensor& aabb_a,
                    const at::Tensor& aabb_b, double tol, int64_t mode, bool prune,
                    at::Tensor& out) {
  check_sets(subject, clip);
  const int64_t n = subject.size(0), m = clip.size(0);
  TORCH_CHECK(aabb_a.scalar_type() == at::kDouble && aabb_a.is_contiguous() &&
                  aabb_a.size(0) == n && aabb_a.size(1) == 4,
              "aabb_a must be contiguous float64 [N, 4]");
  TORCH_CHECK(aabb_b.scalar_type() == at::kDouble && aabb_b.is_contiguous() &&
                  aabb_b.size(0) == m && aabb_b.size(1) == 4,
              "aabb_b must be contiguous float64 [M, 4]");
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == n && out.size(1) == m,
              "out must be contiguous [N, M]");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (iou) or 1 (iof)");
  if (n == 0 || m == 0) return;
  const double* sub = subject.data_ptr<double>();
  const double* clp = clip.data_ptr<double>();
  const double* ba = aabb_a.data_ptr<double>();
  const double* bb = aabb_b.data_ptr<double>();
  if (out.scalar_type() == at::kDouble) {
    matrix_impl<double>(sub, clp, ba, bb, n, m, tol, mode, prune, out.data_ptr<double>());
  } else {
    TORCH_CHECK(out.scalar_type() == at::kFloat, "out must be float32 or float64");
    matrix_impl<float>(sub, clp, ba, bb, n, m, tol, mode, prune, out.data_ptr<float>());
  }
}

// Overlaps of the listed pairs (subject[ia[k]], clip[ib[k]]) -> [P] float64.
at::Tensor overlap_pairs(const at::Tensor& subject, const at::Tensor& clip, const at::Tensor& ia,
                         const at::Tensor& ib, double tol, int64_t mode) {
  check_sets(subject, clip);
  TORCH_CHECK(ia.scalar_type() == at::kLong && ib.scalar_type() == at::kLong && ia.dim() == 1 &&
                  ib.dim() == 1 && ia.size(0) == ib.size(0),
              "ia, ib must be int64 [P] of equal length");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (iou) or 1 (iof)");
  const at::Tensor ia_c = ia.contiguous(), ib_c = ib.contiguous();
  const int64_t p = ia_c.size(0);
  at::Tensor out = at::empty({p}, subject.options());
  if (p == 0) return out;
  const int64_t n = subject.size(0), m = clip.size(0);
  const int64_t* a = ia_c.data_ptr<int64_t>();
  const int64_t* b = ib_c.data_ptr<int64_t>();
  const double* sub = subject.data_ptr<double>();
  const double* clp = clip.data_ptr<double>();
  double* o = out.data_ptr<double>();
  // Bounds are checked up front so that the parallel loop cannot fail half-way.
  for (int64_t k = 0; k < p; ++k) {
    TORCH_CHECK(a[k] >= 0 && a[k] < n && b[k] >= 0 && b[k] < m, "pair index out of range");
  }
  at::parallel_for(0, p, kGrainPairs, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      o[k] = overlap_ratio(sub + a[k] * kSubject, clp + b[k] * kClip, tol, mode);
    }
  });
  return out;
}

// Greedy NMS of boxes already sorted by decreasing score: keep box i unless a kept box before
// it has IoU > threshold with it (and, with labels, the same label). Returns [N] bool. This is
// the sequential definition itself (mmcv's nms_rotated CPU loop has the same shape): each kept
// box is compared with the later undecided boxes once, so dense clusters where few boxes survive
// cost N x kept pairs. A negative threshold lets disjoint boxes suppress, so no pruning then.
at::Tensor nms_sorted(const at::Tensor& subject, const at::Tensor& clip, const at::Tensor& aabb,
                      const at::Tensor& labels, double threshold, double tol) {
  check_sets(subject, clip);
  const int64_t n = subject.size(0);
  TORCH_CHECK(clip.size(0) == n, "subject and clip must describe the same boxes");
  TORCH_CHECK(aabb.scalar_type() == at::kDouble && aabb.is_contiguous() && aabb.size(0) == n &&
                  aabb.size(1) == 4,
              "aabb must be contiguous float64 [N, 4]");
  const bool by_label = labels.numel() > 0;
  at::Tensor labels_c = labels.contiguous();
  if (by_label) {
    TORCH_CHECK(labels_c.scalar_type() == at::kLong && labels_c.numel() == n,
                "labels must be int64 [N] (or empty)");
  }
  at::Tensor keep = at::zeros({n}, subject.options().dtype(at::kBool));
  if (n == 0) return keep;
  const double* sub = subject.data_ptr<double>();
  const double* clp = clip.data_ptr<double>();
  const double* box = aabb.data_ptr<double>();
  const int64_t* lab = by_label ? labels_c.data_ptr<int64_t>() : nullptr;
  bool* kept = keep.data_ptr<bool>();
  std::vector<char> suppressed(n, 0);
  const bool prune = threshold >= 0;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    kept[i] = true;
    const double* bi = box + i * 4;
    const double* si = sub + i * kSubject;
    // Later boxes are independent of each other here, so they can be tested in parallel.
    at::parallel_for(i + 1, n, kGrainPairs, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        if (suppressed[j] || (lab != nullptr && lab[j] != lab[i])) continue;
        const double* bj = box + j * 4;
        if (prune && (bi[0] > bj[2] || bj[0] > bi[2] || bi[1] > bj[3] || bj[1] > bi[3])) continue;
        if (overlap_ratio(si, clp + j * kClip, tol, 0) > threshold) suppressed[j] = 1;
      }
    });
  }
  return keep;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("nms_sorted", &nms_sorted, "greedy NMS of score-sorted convex quads");
  module.def("overlap_matrix", &overlap_matrix, "dense [N, M] overlaps of convex quads");
  module.def("overlap_pairs", &overlap_pairs, "overlaps of listed pairs of convex quads");
}
