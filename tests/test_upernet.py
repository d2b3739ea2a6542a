"""UperNet + FCN auxiliary head over a ViTDet-style pyramid: shapes, gradients, losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsfm_ds.models.heads import FCNHead, UperNet, UperNetConfig, UperNetHead, resize_logits, segmentation_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def pyramid(batch=2, size=64, channels=32, requires_grad=False):
    feats = {f"p{i}": torch.randn(batch, channels, size // 2 ** i, size // 2 ** i) for i in (2, 3, 4, 5)}
    for f in feats.values():
        f.requires_grad_(requires_grad)
    return feats


def test_output_shapes():
    torch.manual_seed(0)
    model = UperNet(6, in_channels=32, cfg=UperNetConfig(channels=16, aux_channels=8))
    feats = pyramid()
    assert model(feats).shape == (2, 6, 16, 16)  # stride 4
    assert model.aux(feats).shape == (2, 6, 4, 4)  # p4, stride 16
    assert model.predict(feats, (64, 64)).shape == (2, 6, 64, 64)
    head = UperNetHead(3, in_channels=[8, 16, 32], in_keys=("p3", "p4", "p5"), channels=16)
    feats = {"p3": torch.randn(1, 8, 8, 8), "p4": torch.randn(1, 16, 4, 4), "p5": torch.randn(1, 32, 2, 2)}
    assert head.eval()(feats).shape == (1, 3, 8, 8)
    assert resize_logits(torch.zeros(1, 3, 8, 8), (30, 20)).shape == (1, 3, 30, 20)


def test_gradients_reach_every_parameter_and_every_level():
    torch.manual_seed(0)
    model = UperNet(5, in_channels=32, cfg=UperNetConfig(channels=16, aux_channels=8))
    feats = pyramid(requires_grad=True)
    labels = torch.randint(0, 5, (2, 64, 64))
    losses = model.loss(feats, labels)
    assert set(losses) == {"loss_seg", "loss_aux"}
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for key, f in feats.items():
        assert f.grad is not None and f.grad.abs().sum() > 0, key


def test_loss_values_ignore_and_aux_weight():
    torch.manual_seed(0)
    # GN: 32 groups of 2 channels, so the 1x1 pyramid-pooling cell has 2 values per group.
    cfg = UperNetConfig(channels=64, aux_channels=64, aux_weight=0.4, norm="gn")
    model = UperNet(4, in_channels=32, cfg=cfg).eval()
    feats = pyramid(batch=1)
    labels = torch.randint(0, 4, (1, 64, 64))
    labels[:, :10] = 255
    losses = model.loss(feats, labels)
    main = F.interpolate(model(feats), size=(64, 64), mode="bilinear", align_corners=False)
    keep = labels != 255
    expected = F.cross_entropy(main.permute(0, 2, 3, 1)[keep], labels[keep])
    assert torch.allclose(losses["loss_seg"], expected, atol=1e-5)
    aux = segmentation_loss(model.aux(feats), labels)
    assert torch.allclose(losses["loss_aux"], 0.4 * aux, atol=1e-6)
    # A batch with nothing to score: zero loss, still backpropagates.
    feats = pyramid(batch=1, requires_grad=True)
    losses = model.loss(feats, torch.full((1, 64, 64), 255))
    assert losses["loss_seg"].item() == 0.0
    sum(losses.values()).backward()
    assert feats["p2"].grad is not None


def test_options_and_errors():
    no_aux = UperNet(3, in_channels=32, cfg=UperNetConfig(channels=64, aux_weight=0.0, norm="gn"))
    assert no_aux.aux is None
    losses = no_aux.train().loss(pyramid(batch=1), torch.randint(0, 3, (1, 64, 64)))  # GN: batch 1 trains
    assert set(losses) == {"loss_seg"}
    with pytest.raises(ValueError, match="norm"):
        UperNet(3, cfg=UperNetConfig(norm="ln"))
    with pytest.raises(KeyError, match="p5"):
        UperNetHead(3, 32, channels=16)({"p2": torch.randn(1, 32, 8, 8)})
    with pytest.raises(KeyError, match="p4"):
        FCNHead(3, 32, channels=8)({"p2": torch.randn(1, 32, 8, 8)})
    with pytest.raises(ValueError, match="in_channels"):
        UperNetHead(3, [32, 32], in_keys=("p2", "p3", "p4"))
    with pytest.raises(ValueError, match="labels"):
        segmentation_loss(torch.randn(2, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.long))


def test_head_learns_a_pixel_rule():
    """Steps on a fixed batch whose labels are readable from the finest level drive the loss down."""
    torch.manual_seed(0)
    model = UperNet(2, in_channels=8, cfg=UperNetConfig(channels=16, aux_channels=8))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    feats = pyramid(batch=2, size=32, channels=8)
    labels = (F.interpolate(feats["p2"][:, :1], size=(32, 32), mode="nearest")[:, 0] > 0).long()
    history = []
    for _ in range(30):
        loss = sum(model.loss(feats, labels).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert min(history[-5:]) < 0.6 * history[0]


def test_norm_choices_and_syncbn_on_one_process_is_bn():
    """norm="syncbn" (the default, mmseg's SyncBN) builds synchronised BatchNorm; on one process it
    trains and evaluates exactly as norm="bn" from the same weights."""
    from rsfm_ds.models.sync_batchnorm import SyncBatchNorm

    torch.manual_seed(0)
    assert UperNetConfig().norm == "syncbn"
    sync = UperNet(4, in_channels=16, cfg=UperNetConfig(channels=16, aux_channels=8))
    plain = UperNet(4, in_channels=16, cfg=UperNetConfig(channels=16, aux_channels=8, norm="bn"))

    def norms(model):
        return {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    assert norms(sync) == {SyncBatchNorm} and norms(plain) == {torch.nn.BatchNorm2d}
    plain.load_state_dict(sync.state_dict())  # same names: checkpoints move between the two
    feats, labels = pyramid(batch=2, channels=16), torch.randint(0, 4, (2, 64, 64))
    torch.manual_seed(1)
    a = sync.train().loss(feats, labels)
    torch.manual_seed(1)  # the same dropout masks
    b = plain.train().loss(feats, labels)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(sync.buffers(), plain.buffers()))
    assert torch.equal(sync.eval()(feats), plain.eval()(feats))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # micro-batch 1, one process
        sync.train().loss(pyramid(batch=1, channels=16), labels[:1])
