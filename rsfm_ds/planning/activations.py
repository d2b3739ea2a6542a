"""Activation memory of rsfm-ds models, derived from their architecture tensor by tensor.

Every count below is the number of elements autograd *saves* for the backward pass (the tensors
whose storage stays alive from the forward until the backward of their op), per sample, derived
from the code in ``rsfm_ds/models`` and checked against
``torch.autograd.graph.saved_tensors_hooks`` in ``tests/test_planning.py``. Tensors are split by
element type because their byte size differs: ``act`` elements are in the training dtype
(bf16/fp16: 2 bytes, fp32: 4), ``f32`` elements are always 4 bytes (norm statistics, attention
log-sum-exp, the fp32 loss), ``i64`` 8 bytes (indexes), ``upcast`` are fp32 copies of
training-dtype tensors (none in fp32).

On top of what is saved, each phase of a step needs working memory that lives only for a moment
(the output of all branches before they are summed, the gradients of a layer's intermediates while
its backward runs, the anchor/ground-truth IoU matrix of the detector's RPN). A step's activation
peak is the maximum over its phases of ``saved-at-that-moment + working memory``; an
:class:`ActivationEstimate` lists those phases so a micro batch of any size can be evaluated.

What is *not* modelled (each is below 1% of the total for the shipped configs): parameters saved by
their layers (counted as gathered parameters by the memory model, not as activations), 0-d tensors
and shapes, int64 gather indexes of the MAE (one per kept/restored token), the BatchNorm running
statistics, and the relative-position tables and their int64 offset indexes (per batch, a few kB).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Elems:
    """Element counts by element type.

    Attributes:
        act: elements in the training dtype (2 bytes in bf16/fp16, 4 in fp32).
        f32: elements that are fp32 whatever the training dtype.
        i64: int64 elements.
        upcast: fp32 copies of training-dtype tensors (``x.float()``): 4 bytes each in bf16/fp16,
            none in fp32, where ``.float()`` returns the tensor itself.
    """

    act: float = 0.0
    f32: float = 0.0
    i64: float = 0.0
    upcast: float = 0.0

    def __add__(self, other: "Elems") -> "Elems":
        return Elems(self.act + other.act, self.f32 + other.f32, self.i64 + other.i64,
                     self.upcast + other.upcast)

    def __mul__(self, k: float) -> "Elems":
        return Elems(self.act * k, self.f32 * k, self.i64 * k, self.upcast * k)

    __rmul__ = __mul__

    def bytes(self, act_bytes: int) -> float:
        """Bytes when the training dtype has ``act_bytes`` bytes per element."""
        return (self.act * act_bytes + 4 * self.f32 + 8 * self.i64
                + (4 * self.upcast if act_bytes != 4 else 0))


def total(parts: Dict[str, Elems]) -> Elems:
    out = Elems()
    for e in parts.values():
        out = out + e
    return out


@dataclass(frozen=True)
class Phase:
    """One moment of a training step: ``micro_batch * per_sample + constant`` elements are live.

    Attributes:
        name: what happens then.
        per_sample: live elements per sample (saved tensors plus working memory).
        constant: live elements that do not grow with the micro batch (e.g. per-image work done
            one image at a time).
    """

    name: str
    per_sample: Elems
    constant: Elems = Elems()


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation memory of one model at one input size.

    Attributes:
        saved: per-sample saved elements by component (what stays alive until the backward).
        phases: the candidate peaks of a step (see :class:`Phase`).
        notes: what the estimate assumes.
    """

    saved: Dict[str, Elems]
    phases: Tuple[Phase, ...]
    notes: Tuple[str, ...] = ()

    def saved_bytes(self, micro_batch: int, act_bytes: int) -> float:
        """Bytes saved for the backward at the end of the forward pass."""
        return micro_batch * total(self.saved).bytes(act_bytes)

    def peak_phase(self, micro_batch: int, act_bytes: int) -> Phase:
        """The phase with the most live bytes at this micro batch."""
        return max(self.phases, key=lambda p: micro_batch * p.per_sample.bytes(act_bytes)
                   + p.constant.bytes(act_bytes))

    def peak(self, micro_batch: int, act_bytes: int) -> Tuple[float, str]:
        """``(bytes, phase name)`` of the largest phase for this micro batch."""
        best = self.peak_phase(micro_batch, act_bytes)
        return (micro_batch * best.per_sample.bytes(act_bytes) + best.constant.bytes(act_bytes),
                best.name)


# --------------------------------------------------------------------------------------------
# Transformer layers (rsfm_ds.models.vit.Block / ParallelBlock, with Attention or ViTDetAttention)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One transformer layer as the memory model sees it.

    Attributes:
        tokens: tokens per sample (real tokens; for ViTDet the ``gh * gw`` grid).
        dim: width D.
        mlp: MLP hidden width M (per branch).
        heads: attention heads per branch.
        branches: parallel branches (1 = standard block).
        window: window side in tokens (0 = global attention).
        grid: ``(gh, gw)`` token grid, needed for windows (padding to a multiple of ``window``).
        fused: attention through ``scaled_dot_product_attention`` (True) or explicit softmax.
        stores_scores: whether the attention stores the ``heads x group x group`` probability
            matrix for the backward pass; true for explicit softmax, and for a fused kernel only
            on a device profile whose SDPA backend falls back to the math path.
        rel_pos: ViTDet's decomposed relative position bias: a float ``heads x group x group``
            mask built per attention group from ``q`` (two permuted copies of ``q`` saved by its
            einsums) and handed to the attention.
        masked_math: with such a mask, the fused attention runs the math path (it does on a CPU:
            the flash kernel takes no gradient-carrying mask) and saves what explicit softmax
            saves; false where a memory-efficient kernel takes it (CUDA), which saves the mask.
    """

    tokens: int
    dim: int
    mlp: int
    heads: int
    branches: int = 1
    window: int = 0
    grid: Optional[Tuple[int, int]] = None
    fused: bool = True
    stores_scores: bool = False
    rel_pos: bool = False
    masked_math: bool = False

    @property
    def explicit(self) -> bool:
        """Whether the attention saves what explicit softmax saves."""
        return not self.fused or (self.rel_pos and self.masked_math)

    @property
    def scores(self) -> int:
        """Elements of one sample's ``heads x group x group`` matrices (probabilities or mask)."""
        return self.heads * self.group * self.attn_tokens

    @property
    def attn_tokens(self) -> int:
        """Tokens the attention computes on: the grid padded to whole windows, or all tokens."""
        if not self.window:
            return self.tokens
        gh, gw = self.grid
        w = self.window
        return math.ceil(gh / w) * w * math.ceil(gw / w) * w

    @property
    def group(self) -> int:
        """Tokens per attention group (a window, or the whole sequence)."""
        return self.window * self.window if self.window else self.tokens


def layer_saved(s: LayerSpec) -> Elems:
    """Elements one layer saves per sample (see the module docstring).

    Per layer: its input ``x`` (saved by every attention branch's LayerNorm, one storage) and
    the residual sum ``x2`` (saved by the MLP norms). Per attention branch, with ``n`` tokens,
    ``na`` attention tokens and width ``D``:

    * global attention, fused: the norm output (qkv's input), the qkv output (q, k and v are views
      of it, saved by SDPA) and SDPA's output (its backward needs it; the output projection's input
      is a view of the same storage): ``5 n D``, plus the fp32 log-sum-exp ``heads x n``;
    * global, explicit softmax: the norm output, ``q * scale``, contiguous copies of ``k^T`` and
      ``v`` made by the batched matmuls, the projection's input: ``5 n D``, plus the probabilities
      ``heads x n x n``;
    * windows (ViTDet): the norm output is padded and partitioned (copies nobody saves), so the
      qkv input is the padded windows ``na D``; fused: + qkv output ``3 na D`` + SDPA output
      ``na D``; explicit: + q, k, v copies ``3 na D`` + probabilities ``heads x w^2 x na``; then
      the unpartitioned, cropped output (the projection's input) ``n D``.

    With relative position (``rel_pos``): + two permuted copies of ``q`` (``2 na D``, saved by the
    bias einsums); the attention then saves what explicit softmax saves where the mask sends it to
    the math path (``masked_math``, a CPU), else the fused path's tensors and the mask itself.

    Per MLP branch: the norm output ``n D``, fc1's output (GELU's input) ``n M`` and GELU's output
    (fc2's input) ``n M``. Every LayerNorm saves fp32 mean and rstd (``2 n``). Branch outputs are
    stacked and summed, and drop path multiplies by a per-sample mask: none of that is saved.
    """
    n, d, m, h, br = s.tokens, s.dim, s.mlp, s.heads, s.branches
    na = s.attn_tokens
    out = Elems(act=2 * n * d)
    if s.window:
        attn = Elems(act=(4 if s.explicit else 5) * na * d + n * d)
    else:
        attn = Elems(act=5 * n * d)
    if s.stores_scores or s.explicit:
        attn = attn + Elems(act=s.scores)
    else:
        attn = attn + Elems(f32=h * na)
    if s.rel_pos:
        attn = attn + Elems(act=2 * na * d + (0 if s.explicit else s.scores))
    mlp = Elems(act=n * d + 2 * n * m)
    norms = Elems(f32=2 * n * 2)  # one norm in each attention and each MLP branch
    return out + br * (attn + mlp + norms)


def layer_working(s: LayerSpec) -> Elems:
    """Transient elements per sample on top of what is saved, at the layer's worst moment.

    Forward: the ``branches`` outputs, their stack and its sum live together: ``(2 br + 1) n D``
    (+ the pre-softmax scores of the explicit path). Backward of an MLP branch: the gradients of
    GELU's output and input (``2 n M``) while the incoming gradient, the norm-output gradient and
    the accumulated input gradient (``3 n D``) live. Backward of an attention branch: the q, k, v
    gradients and the output gradient (``4 na D``), the incoming and accumulated gradients
    (``2 n D``), and with explicit softmax two probability-sized gradients. A relative-position
    mask lives through the forward and has a gradient in the backward (one more of that size).
    """
    n, d, m, br = s.tokens, s.dim, s.mlp, s.branches
    na = s.attn_tokens
    scores = s.scores if (s.stores_scores or s.explicit) else 0
    mask = s.scores if s.rel_pos else 0
    forward = (2 * br + 1) * n * d + scores + mask
    backward_mlp = 2 * n * m + 3 * n * d
    backward_attn = 4 * na * d + 2 * n * d + 2 * scores + mask
    return Elems(act=max(forward, backward_mlp, backward_attn))


def encoder_layers(specs: Sequence[LayerSpec], checkpointing: bool
                   ) -> Tuple[Elems, Elems]:
    """``(saved, recompute)`` of a stack of layers per sample.

    Without checkpointing every layer keeps what :func:`layer_saved` lists. With (non-reentrant)
    checkpointing only each layer's input ``n D`` is kept; in the backward pass one layer at a
    time is recomputed, so ``recompute`` is the largest layer's saved tensors plus its working
    memory (zero without checkpointing: nothing is recomputed).
    """
    if not checkpointing:
        saved = Elems()
        for s in specs:
            saved = saved + layer_saved(s)
        return saved, Elems()
    saved = Elems(act=sum(s.tokens * s.dim for s in specs))
    recompute = max((layer_saved(s) + layer_working(s) for s in specs),
                    key=lambda e: e.bytes(2))
    return saved, recompute


# --------------------------------------------------------------------------------------------
# MAE pretraining (rsfm_ds.models.mae.MaskedAutoencoder)
# --------------------------------------------------------------------------------------------

def mae_activations(*, dim: int, mlp: int, heads: int, depth: int, branches: int,
                    patch_size: int, decoder: Tuple[int, int, int], img_size: int = 224,
                    mask_ratio: float = 0.75, in_chans: int = 3, checkpointing: bool = True,
                    fused: bool = True, stores_scores: bool = False) -> ActivationEstimate:
    """Activation memory of one MAE training step.

    ``L = (img_size / patch)^2`` patches, ``K = round(L (1 - mask_ratio))`` of them visible: the
    encoder runs on ``K + 1`` tokens (with the class token), the decoder on ``L + 1``.

    Saved per sample: the input image (the patch projection's input, ``C H W``); the embedded
    patches ``L D`` (``torch.gather`` keeps its source for the backward, so the masking keeps all
    ``L`` tokens alive, not only the visible ones); the encoder layers (:func:`encoder_layers`);
    the encoder's final norm input and output (the decoder embedding's input); the decoder's
    un-shuffling gather source ``L Dd``; the decoder blocks (standard blocks of width ``Dd``, MLP
    ``4 Dd``, never checkpointed: the encoder's checkpointing switch leaves them alone); the
    decoder norm's input
    and output (the prediction layer's input); and the fp32 loss: ``pred - target`` over ``L x
    p^2 C`` (saved by the square) plus the ``L`` mask.

    Phases: (1) the end of the forward pass, when everything saved is alive plus the loss's fp32
    working copies (the patchified and the normalised target ``2 L p^2 C``, and in bf16/fp16 the
    float image and the float prediction, another ``2 L p^2 C``), or the backward of a decoder
    block; (2) with
    checkpointing, the backward through the encoder: the decoder's tensors are gone, the layer
    inputs remain and one layer is recomputed.
    """
    dec_dim, dec_depth, dec_heads = decoder
    patches = (img_size // patch_size) ** 2
    kept = int(round(patches * (1 - mask_ratio)))
    n_enc, n_dec = kept + 1, patches + 1
    pixels = patch_size * patch_size * in_chans
    enc_spec = LayerSpec(n_enc, dim, mlp, heads, branches, fused=fused, stores_scores=stores_scores)
    # The decoder blocks are built with fused attention whatever the encoder's switch says.
    dec_spec = LayerSpec(n_dec, dec_dim, 4 * dec_dim, dec_heads, 1, fused=True,
                         stores_scores=stores_scores)
    enc_saved, recompute = encoder_layers([enc_spec] * depth, checkpointing)
    saved = {
        "input image": Elems(act=in_chans * img_size * img_size),
        "embedded patches (masking gather)": Elems(act=patches * dim),
        "encoder layers": enc_saved,
        "encoder norm": Elems(act=2 * n_enc * dim, f32=2 * n_enc),
        "decoder gather": Elems(act=patches * dec_dim),
        "decoder layers": dec_depth * layer_saved(dec_spec),
        "decoder norm + prediction": Elems(act=2 * n_dec * dec_dim, f32=2 * n_dec),
        "loss (fp32)": Elems(f32=patches * pixels + patches),
    }
    everything = total(saved)
    loss_work = Elems(f32=2 * patches * pixels, upcast=2 * patches * pixels)
    phases = [Phase("end of forward / decoder backward",
                    everything + max(loss_work, layer_working(dec_spec), key=lambda e: e.bytes(2)))]
    if checkpointing:
        kept_in_backward = (saved["input image"] + saved["embedded patches (masking gather)"]
                            + enc_saved)
        phases.append(Phase("encoder backward (one layer recomputed)", kept_in_backward + recompute))
    notes = (f"encoder on {n_enc} tokens ({kept} visible patches + class token), decoder on {n_dec}",)
    return ActivationEstimate(saved, tuple(phases), notes)


# --------------------------------------------------------------------------------------------
# ViTDet backbone + simple feature pyramid (rsfm_ds.models.vitdet)
# --------------------------------------------------------------------------------------------

def vitdet_layers(*, img_size: int, patch_size: int, dim: int, mlp: int, heads: int, depth: int,
                  branches: int, window: int, global_layers: Sequence[int], fused: bool = True,
                  stores_scores: bool = False, rel_pos: bool = False,
                  masked_math: bool = False) -> List[LayerSpec]:
    """The layers of a ViTDet backbone at ``img_size`` (``ceil(S / p)`` tokens a side)."""
    g = math.ceil(img_size / patch_size)
    return [LayerSpec(g * g, dim, mlp, heads, branches, window=0 if i in global_layers else window,
                      grid=(g, g), fused=fused, stores_scores=stores_scores, rel_pos=rel_pos,
                      masked_math=masked_math) for i in range(depth)]


def pyramid_saved(*, img_size: int, patch_size: int, dim: int, out_channels: int,
                  extra_p6: bool, outputs: bool = True) -> Elems:
    """Elements the simple feature pyramid saves per sample; ``outputs``: count the level outputs
    too (the heads' first layers save them; without heads nothing does).

    With ``n = g^2`` tokens of width ``D`` and pyramid width ``C``: the final encoder norm's
    output ``n D`` (every level's first op reads it); x4 level: ConvT output ``2 n D`` (saved by
    the channel LayerNorm), norm output ``2 n D`` (GELU's input), GELU output ``2 n D``, second
    ConvT output ``4 n D``, then at ``16 n`` positions the lateral 1x1 output, its norm output,
    the 3x3 output (and the level output) ``3 (4) x 16 n C``; x2: ConvT output ``2 n D`` and
    ``3 (4) x 4 n C``; x1: ``3 (4) x n C``; /2: the max-pool's int64 indexes ``n D / 4``, its
    output ``n D / 4`` and ``3 (4) x n C / 4``; p6 (detection): ``n C / 16`` and its indexes. Channel norms
    keep fp32 statistics (2 per position).
    """
    g = math.ceil(img_size / patch_size)
    n, d, c = g * g, dim, out_channels
    positions = 16 * n + 4 * n + n + n / 4
    per_level = 4 if outputs else 3
    act = n * d + (2 + 2 + 2 + 4) * n * d + 2 * n * d + n * d / 4 + per_level * c * positions
    f32 = 2 * (4 * n) + 2 * 3 * positions  # the x4 path's inner norm, and 3 norms per level
    i64 = n * d / 4
    if extra_p6 and outputs:  # p6 max-pools p5's output: its input, indexes and output
        act += c * n / 16
        i64 += c * n / 16
    return Elems(act=act, f32=f32, i64=i64)


def pyramid_sides(img_size: int, extra_p6: bool, patch_size: int = 16) -> List[int]:
    """Side lengths of p2..p5 (and p6) for an ``img_size`` input: with ``g = ceil(S / patch)``
    tokens a side, ``4g, 2g, g, floor(g/2)`` and ``ceil(floor(g/2) / 2)`` (ViTDetBackbone)."""
    g = math.ceil(img_size / patch_size)
    sides = [4 * g, 2 * g, g, g // 2]
    if extra_p6:
        sides.append(math.ceil((g // 2) / 2))
    return sides


def pyramid_levels(img_size: int, extra_p6: bool, patch_size: int = 16) -> List[int]:
    """Positions per sample of p2..p5 (and p6): the squares of :func:`pyramid_sides`."""
    return [s * s for s in pyramid_sides(img_size, extra_p6, patch_size)]


def backbone_activations(layers: Sequence[LayerSpec], *, img_size: int, patch_size: int,
                         dim: int, out_channels: int, extra_p6: bool, checkpointing: bool,
                         in_chans: int = 3) -> Tuple[Dict[str, Elems], Elems]:
    """Saved elements of a ViTDet backbone by component, and its recompute working set."""
    enc_saved, recompute = encoder_layers(layers, checkpointing)
    n = layers[0].tokens
    saved = {
        "input image": Elems(act=in_chans * img_size * img_size),
        "backbone layers": enc_saved,
        "backbone norm": Elems(act=n * dim, f32=2 * n),
        "feature pyramid": pyramid_saved(img_size=img_size, patch_size=patch_size, dim=dim,
                                         out_channels=out_channels, extra_p6=extra_p6),
    }
    return saved, recompute


def upernet_saved(*, img_size: int, in_channels: int = 256, channels: int = 512,
                  aux_channels: int = 256, num_classes: int = 6, pool_scales: int = 4) -> Elems:
    """Elements UperNet + the auxiliary FCN head save per sample (rsfm_ds.models.heads.upernet).

    A conv-norm-ReLU block saves its conv input, the norm's input and the in-place ReLU's output
    (``2 x`` its width per position beyond the input). With ``Ch`` = ``channels`` and ``q2 ..
    q5`` the positions of p2 .. p5: laterals on p2..p4 ``2 Ch (q2 + q3 + q4)``; PPM on p5: the
    concatenation (the bottleneck's input) ``(C + 4 Ch) q5`` and the bottleneck ``2 Ch q5``; FPN
    convs on the top-down sums ``3 Ch (q2 + q3 + q4)``; the fused concatenation at p2 ``4 Ch q2``
    and its conv-norm-ReLU ``2 Ch q2``; the dropout output (the classifier's input) ``Ch q2``;
    the auxiliary head on p4 ``3 Ca q4``. Both losses save fp32 log-probabilities over the full
    ``S x S`` image: ``2 K S^2``.
    """
    q2, q3, q4, q5 = pyramid_levels(img_size, extra_p6=False)
    ch = channels
    act = (2 * ch * (q2 + q3 + q4) + (in_channels + pool_scales * ch) * q5 + 2 * ch * q5
           + 3 * ch * (q2 + q3 + q4) + 4 * ch * q2 + 2 * ch * q2 + ch * q2 + 3 * aux_channels * q4)
    return Elems(act=act, f32=2 * num_classes * img_size * img_size)


def upernet_working(*, img_size: int, channels: int = 512, num_classes: int = 6) -> Elems:
    """Transient elements per sample at UperNet's worst moment, the backward through the fused
    conv-norm-ReLU: its conv computes the gradient of the concatenation (``4 Ch q2``) from the
    incoming gradient (``Ch q2``) while the classifier's, the ReLU's and the norm's saved inputs
    (``3 Ch q2``) are already released: ``2 Ch q2`` more than saved; the full-resolution logits'
    gradient (bf16 upsampled logits, their fp32 copy, ``K S^2`` each) is still referenced then
    (measured on CPU: within 5% of this sum)."""
    q2 = pyramid_levels(img_size, extra_p6=False)[0]
    pixels = num_classes * img_size * img_size
    return Elems(act=2 * channels * q2 + pixels, upcast=pixels, f32=pixels)


def rpn_saved(*, img_size: int, channels: int = 256) -> Elems:
    """Oriented RPN (rsfm_ds.models.heads.oriented_rpn): the shared 3x3 conv's ReLU output on
    every level p2..p6 (saved by ReLU and by the two 1x1 convs), ``C x sum(q)``."""
    return Elems(act=channels * sum(pyramid_levels(img_size, extra_p6=True)))


def roi_saved(*, channels: int = 256, roi_size: int = 7, fc_dim: int = 1024,
              rois_per_image: int = 512, sampling_ratio: int = 2) -> Elems:
    """Rotated RoI head per image, for ``rois_per_image`` sampled RoIs: RoIAlignRotated's
    ``embedding_bag`` keeps per sample point its int64 index and its weight (``roi^2`` bins x
    ``s^2`` samples x 4 corners per RoI) and three int64 values per bin; each level's pooled
    features are kept by the ``index_copy`` that places them (``C roi^2`` per RoI) and again,
    flattened, by fc1 (``C roi^2``); the two FC-ReLU outputs add ``2 fc``."""
    bins = roi_size * roi_size
    members = bins * sampling_ratio * sampling_ratio * 4
    return Elems(act=rois_per_image * (2 * channels * bins + 2 * fc_dim + members),
                 i64=rois_per_image * (members + 3 * bins))


def valid_anchors(img_size: int, anchor_scale: float = 8.0,
                  anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0), patch_size: int = 16) -> int:
    """Anchors of one ``img_size`` square image that the RPN assigns (``allowed_border=0``).

    As :class:`~rsfm_ds.models.heads.oriented_rpn.AnchorGenerator`: on level ``l`` (stride
    ``s``), an anchor of ratio ``r`` is ``s * scale / sqrt(r)`` wide and ``s * scale * sqrt(r)``
    high, centred at ``s * (j, i)``; it is kept when it lies inside the image (mmrotate's
    ``allowed_border=0``), which the two axes decide independently.
    """
    sides = pyramid_sides(img_size, extra_p6=True, patch_size=patch_size)
    count = 0
    for level, side in enumerate(sides):
        stride = 4 * 2 ** level
        for r in anchor_ratios:
            w, h = stride * anchor_scale / math.sqrt(r), stride * anchor_scale * math.sqrt(r)
            cols = sum(1 for j in range(side) if stride * j - w / 2 >= 0 and stride * j + w / 2 < img_size)
            rows = sum(1 for i in range(side) if stride * i - h / 2 >= 0 and stride * i + h / 2 < img_size)
            count += cols * rows
    return count


def rpn_assign_working(*, img_size: int, objects: int) -> Elems:
    """Working memory of the RPN's anchor assignment for one image (images are assigned one at a
    time): torchvision's ``box_iou`` of the ``G`` ground-truth bounds against every valid anchor
    (:func:`valid_anchors`) keeps ~9 fp32 values per pair alive at its peak (corner maxima and
    minima, their difference, the clamped sizes, intersection and union; measured 9.0 per pair
    on CPU)."""
    return Elems(f32=9 * objects * valid_anchors(img_size))


def finetune_activations(task: str, layers: Sequence[LayerSpec], *, img_size: int,
                         patch_size: int, dim: int, out_channels: int = 256,
                         checkpointing: bool = True, num_classes: int = 6,
                         seg_channels: int = 512, aux_channels: int = 256,
                         objects: int = 100, rois_per_image: int = 512) -> ActivationEstimate:
    """Activation memory of one fine-tuning step: ViTDet backbone + pyramid + task heads.

    ``task="seg"``: UperNet + FCN auxiliary head (:func:`upernet_saved`); phase: the end of the
    forward pass and the head's backward (:func:`upernet_working`). ``task="det"``: Oriented
    R-CNN with the stride-64 level (:func:`rpn_saved`, :func:`roi_saved`); phases: the RPN's
    anchor assignment (:func:`rpn_assign_working`, ``objects`` ground-truth boxes per image, one
    image at a time, so a constant term) before the RoI head has saved anything, and the RoI
    feature extraction (the NHWC copy of p2), and the RoI head's backward (the pooled features'
    gradient). Both tasks: the backward through the backbone
    (with checkpointing: layer inputs + one recomputed layer; the pyramid and heads are gone by
    then).
    """
    if task not in ("det", "seg"):
        raise ValueError(f"task: expected 'det' or 'seg', got {task!r}")
    det = task == "det"
    saved, recompute = backbone_activations(layers, img_size=img_size, patch_size=patch_size,
                                            dim=dim, out_channels=out_channels, extra_p6=det,
                                            checkpointing=checkpointing)
    if det:
        saved["RPN"] = rpn_saved(img_size=img_size, channels=out_channels)
        before_roi = total(saved)
        saved["RoI head"] = roi_saved(channels=out_channels, rois_per_image=rois_per_image)
        p2 = pyramid_levels(img_size, extra_p6=True)[0]
        # RPN loss, then the RoI head: RoIAlignRotated flattens each level into an NHWC table
        # (a copy of the level; p2 is the largest) for its embedding_bag.
        head_phases = [Phase("RPN anchor assignment", before_roi,
                             rpn_assign_working(img_size=img_size, objects=objects)),
                       Phase("RoI feature extraction", total(saved) + Elems(act=p2 * out_channels)),
                       # fc1's backward: the gradient of the pooled features, fc1's input alive.
                       Phase("RoI head backward", total(saved) + Elems(
                           act=rois_per_image * out_channels * 7 * 7))]
        notes = (f"{objects} ground-truth boxes per image in the RPN assignment, "
                 f"{rois_per_image} sampled RoIs per image",)
    else:
        saved["UperNet + aux head"] = upernet_saved(img_size=img_size, in_channels=out_channels,
                                                    channels=seg_channels,
                                                    aux_channels=aux_channels,
                                                    num_classes=num_classes)
        head_phases = [Phase("end of forward / head backward", total(saved) + upernet_working(
            img_size=img_size, channels=seg_channels, num_classes=num_classes))]
        notes = (f"{num_classes} classes, UperNet width {seg_channels}",)
    phases = head_phases
    if checkpointing:
        phases.append(Phase("backbone backward (one layer recomputed)",
                            saved["input image"] + saved["backbone layers"] + recompute))
    else:
        phases.append(Phase("backbone backward", total(saved) + max(
            (layer_working(s) for s in layers), key=lambda e: e.bytes(2))))
    return ActivationEstimate(saved, tuple(phases), notes)


def forward_only_activations(layers: Sequence[LayerSpec], extra: Elems = Elems()) -> ActivationEstimate:
    """A forward pass without gradients saves nothing: the peak is the largest layer's working
    set (its input, the branch outputs and their stack, and the widest intermediate: the MLP's
    hidden activations or the attention's qkv) plus ``extra`` (e.g. the input image)."""
    def work(s: LayerSpec) -> Elems:
        na = s.attn_tokens
        widest = max(2 * s.tokens * s.mlp, 4 * na * s.dim
                     + (s.scores if (s.stores_scores or s.explicit) else 0)
                     + (s.scores if s.rel_pos else 0))
        return Elems(act=(2 * s.branches + 2) * s.tokens * s.dim + widest)

    peak = max((work(s) for s in layers), key=lambda e: e.bytes(2))
    return ActivationEstimate({"forward working set": peak + extra},
                              (Phase("forward (no gradients)", peak + extra),),
                              ("no gradients: nothing is saved for a backward pass",))


__all__ = ["Elems", "Phase", "ActivationEstimate", "LayerSpec", "layer_saved", "layer_working",
           "encoder_layers", "mae_activations", "vitdet_layers", "pyramid_saved", "pyramid_levels",
           "backbone_activations", "upernet_saved", "upernet_working", "rpn_saved", "roi_saved",
           "rpn_assign_working", "finetune_activations", "forward_only_activations", "total"]
