"""The U-Net on every backbone: shapes, frozen and fine-tuned encoders, weights exactly the backbone's."""

from __future__ import annotations

import functools

import pytest
import torch

from ctssl.finetune.unet import build_unet, decoder_parameters, encoder_parameters
from ctssl.pretrain.backbones import BACKBONES, build_backbone


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, restored afterwards: beside the suite's other processes on a 2-core machine, two
    OpenMP threads ran the learning test in 600 s instead of 34 s (measured, load 5-9)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _backbone(name: str, in_chans: int):
    torch.manual_seed(0)
    return build_backbone(name, in_chans)[0]


def _unet(name: str, in_chans: int = 1, num_classes: int = 3):
    torch.manual_seed(1)
    return build_unet(_backbone(name, in_chans), name, num_classes)


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _step(model, in_chans: int, size: int = 32):
    """One SGD step with cross-entropy on a random batch (32 px: the stride-32 map is 1 x 1)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, in_chans, size, size, generator=gen) * 3 + 1          # not the BN's initial statistics
    target = torch.randint(0, 3, (2, size, size), generator=gen)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_shapes_at_64_and_96_px(name):
    in_chans = 1 if name != "resnet50" else 3
    model = _unet(name, in_chans, num_classes=4).eval()
    with torch.no_grad():
        for h, w in [(64, 64), (96, 96), (64, 96)]:
            assert model(torch.randn(1, in_chans, h, w)).shape == (1, 4, h, w)
        with pytest.raises(ValueError, match="multiples of 32"):
            model(torch.randn(1, in_chans, 80, 64))
        with pytest.raises(ValueError, match=f"\\(B, {in_chans}, H, W\\)"):
            model(torch.randn(1, in_chans + 1, 64, 64))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics(name):
    model = _unet(name).freeze_encoder()
    encoder_before, decoder_before = _state(model.encoder), [p.detach().clone() for p in decoder_parameters(model)]
    _step(model, 1)
    assert not model.encoder.training and model.decoder.training
    assert all(p.grad is None and not p.requires_grad for p in encoder_parameters(model))
    after = model.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())    # weights and BN running stats
    changed = [not torch.equal(b, p) for b, p in zip(decoder_before, decoder_parameters(model))]
    assert sum(changed) > 0.9 * len(changed)
    model.freeze_encoder(False)
    assert model.train().encoder.training and all(p.requires_grad for p in encoder_parameters(model))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_full_fine_tuning_trains_the_encoder(name):
    model = _unet(name)
    before = _state(model.encoder)
    _step(model, 1)
    assert all(p.grad is not None for p in encoder_parameters(model))
    after = model.encoder.state_dict()
    weights = [k for k, v in before.items() if v.is_floating_point() and "running" not in k]
    assert sum(not torch.equal(before[k], after[k]) for k in weights) > 0.9 * len(weights)
    stats = [k for k in before if k.endswith("running_mean")]
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert (len(stats) > 0) == name.startswith("resnet")


def test_parameters_split_into_encoder_and_decoder():
    for name in sorted(BACKBONES):
        model = _unet(name)
        encoder, decoder = encoder_parameters(model), decoder_parameters(model)
        assert {id(p) for p in encoder}.isdisjoint(id(p) for p in decoder)
        assert len(encoder) + len(decoder) == len(list(model.parameters()))
        assert len(encoder) == len(list(_backbone(name, 1).parameters()))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_encoder_weights_are_exactly_the_loaded_backbones(name, tmp_path):
    """A backbone saved as ctssl exports it (a .safetensors state dict) and loaded strictly: the U-Net's
    encoder holds exactly its tensors under its keys, computes its features, and leaves it untouched."""
    from safetensors.torch import save_file

    original = _backbone(name, 1)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    loaded, _ = build_backbone(name, 1, init="checkpoint", weights=str(path))
    model = build_unet(loaded, name, 3)
    exported, source = model.export_backbone.state_dict(), loaded.state_dict()
    assert list(exported) == list(source)
    assert all(torch.equal(exported[k], source[k]) for k in source)
    assert all(torch.equal(exported[k], v) for k, v in original.state_dict().items())
    x = torch.randn(2, 1, 64, 64)
    model.eval(), loaded.eval()
    with torch.no_grad():
        features = model.encoder(x)
        if name.startswith("resnet"):       # the deepest map, pooled, is the backbone's feature vector
            torch.testing.assert_close(features[32].mean(dim=(2, 3)), loaded(x))
        else:                                # the last block's map is the backbone's normalised patch tokens
            tokens = loaded.forward_features(x)[:, loaded.num_prefix_tokens:]
            torch.testing.assert_close(features[-1].flatten(2).transpose(1, 2), tokens)
    model.encoder.backbone.state_dict()[next(iter(exported))].add_(1.0)        # a copy: the source is untouched
    assert all(torch.equal(loaded.state_dict()[k], source[k]) for k in source)


def test_bad_arguments_say_what_was_received():
    backbone = _backbone("resnet18", 1)
    with pytest.raises(ValueError, match="its architecture is unknown"):    # the registry entry comes from the module
        build_unet(torch.nn.Linear(2, 2), "mlp", 3)
    with pytest.raises(ValueError, match=">= 2"):
        build_unet(backbone, "resnet18", 1)
    with pytest.raises(ValueError, match="5 decoder widths"):
        build_unet(backbone, "resnet18", 3, filters=(64, 32, 16))


def _disks(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, size, size) images of 1-3 bright disks (radius 4-10 px, +1) on Gaussian noise (sd 0.5), and
    their (n, size, size) masks."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            cy, cx = torch.randint(8, size - 8, (2,), generator=gen)
            radius = 4 + 6 * torch.rand(1, generator=gen)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1
    return torch.randn(n, 1, size, size, generator=gen) * 0.5 + labels[:, None].float(), labels


def test_unet_learns_disks_on_noise():
    """A random-init ResNet-18 U-Net, fine-tuned whole for 60 steps of 8 images (AdamW 3e-3, cross-entropy +
    soft Dice), segments held-out disks: per-case Dice (each image a (1, H, W) case) above 0.8, far above
    calling everything foreground (measured: 0.947, worst case 0.863, against 0.139)."""
    import numpy as np

    from ctssl.eval.measures.segmentation import case_metrics
    from ctssl.finetune.seg_loss import ce_dice_loss

    gen = torch.Generator().manual_seed(0)
    images, labels = _disks(320, 64, gen)
    train_x, train_y, test_x, test_y = images[:256], labels[:256], images[256:], labels[256:]
    model = _unet("resnet18", 1, num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, len(train_x), (8,), generator=gen)
        loss, _ = ce_dice_loss(model(train_x[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test_x).argmax(1).numpy()
    reference = test_y.numpy()
    dice = [case_metrics(reference[i:i + 1], predicted[i:i + 1], 2, (1.0, 1.0, 1.0), 1.0)["mean_dice"]
            for i in range(len(reference))]
    everything = [case_metrics(r[None], np.ones_like(r[None]), 2, (1.0, 1.0, 1.0), 1.0)["mean_dice"] for r in reference]
    assert np.mean(dice) > 0.8, f"per-case Dice {np.mean(dice):.3f} after 60 steps"
    assert np.mean(dice) > np.mean(everything) + 0.5
