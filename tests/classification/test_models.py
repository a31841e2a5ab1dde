"""Classification models: shapes, auxiliary heads, parameter counts, registry errors."""

from __future__ import annotations

import pytest
import torch

from kdbench.adapters.classification import models
from kdbench.adapters.classification.models import ClassifierOutput, build_model

RESNETS = ["resnet8", "resnet20", "resnet56", "resnet110", "resnet8x4", "resnet32x4"]


def _input(arch: str) -> torch.Tensor:
    # CIFAR 3×32×32 for the ResNets, digits 1×8×8 for the ConvNet
    return torch.randn(2, 3, 32, 32) if arch in RESNETS else torch.randn(2, 1, 8, 8)


def _build(arch: str, aux_heads: bool = False) -> models.StagedClassifier:
    in_channels = 3 if arch in RESNETS else 1
    return build_model(arch, num_classes=7, in_channels=in_channels, aux_heads=aux_heads)


def test_registry_holds_every_arch() -> None:
    assert set(models.MODELS) == {"convnet", "convnet1d", "transformer1d", *RESNETS}


@pytest.mark.parametrize("arch", ["convnet", *RESNETS])
def test_forward_shapes(arch: str) -> None:
    torch.manual_seed(0)
    model = _build(arch, aux_heads=True)
    out = model(_input(arch))
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (2, 7)
    assert len(out.aux_logits) == 2 and all(a.shape == (2, 7) for a in out.aux_logits)
    dims = model.feature_dims()
    assert set(out.features) == {"stage1", "stage2", "stage3", "embedding"} == set(dims)
    side = 32 if arch in RESNETS else 8
    for i, name in enumerate(("stage1", "stage2", "stage3")):
        s = side // 2**i  # ResNets 32, 16, 8; ConvNet on digits 8, 4, 2
        assert out.features[name].shape == (2, dims[name], s, s)
    assert out.features["embedding"].shape == (2, dims["embedding"])
    out.logits.sum().backward()


def test_no_aux_heads_by_default() -> None:
    out = _build("resnet8")(_input("resnet8"))
    assert out.aux_logits == []


@pytest.mark.parametrize("arch", ["convnet", "resnet8", "transformer1d"])
def test_aux_heads_do_not_change_final_logits(arch: str) -> None:
    torch.manual_seed(0)
    plain = _build(arch).eval()
    torch.manual_seed(1)
    with_aux = _build(arch, aux_heads=True).eval()
    missing, unexpected = with_aux.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("aux_heads.") for k in missing)
    x = _input(arch)
    with torch.no_grad():
        a, b = plain(x), with_aux(x)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.features["stage3"], b.features["stage3"], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["convnet", "transformer1d"])
def test_aux_heads_leave_main_init_unchanged(arch: str) -> None:
    # aux heads are created after the main network, so a seed gives the same main weights
    torch.manual_seed(3)
    plain = _build(arch).state_dict()
    torch.manual_seed(3)
    with_aux = _build(arch, aux_heads=True).state_dict()
    for key, value in plain.items():
        torch.testing.assert_close(with_aux[key], value, rtol=0, atol=0)


# Measured with 100 classes: resnet8x4 1,233,540 and resnet32x4 7,433,860 parameters, as
# reported by CRD (Tian et al., ICLR 2020): 1.23M and 7.43M.
@pytest.mark.parametrize(("arch", "expected"), [("resnet8x4", 1.23e6), ("resnet32x4", 7.43e6)])
def test_parameter_counts(arch: str, expected: float) -> None:
    n = models.count_parameters(build_model(arch, num_classes=100, in_channels=3))
    assert abs(n - expected) / expected < 0.01


def test_convnet_widths_via_kwargs() -> None:
    model = build_model("convnet", num_classes=10, in_channels=1, widths=(4, 8, 12))
    assert model.feature_dims() == {"stage1": 4, "stage2": 8, "stage3": 12, "embedding": 12}


@pytest.mark.parametrize(("shape", "tokens"), [((2, 1, 40), 10), ((2, 1, 8, 8), 16), ((2, 3, 10), 3)])
def test_transformer1d_reads_any_input_as_a_signal_of_patches(shape: tuple[int, ...], tokens: int) -> None:
    """Another family than the CNNs: tokens of `patch` samples (8×8 digits row by row, a length
    not divisible by the patch zero-padded), stage features (B, C, N) channels first."""
    torch.manual_seed(0)
    model = build_model("transformer1d", num_classes=7, in_channels=shape[1], aux_heads=True,
                        widths=(8, 16, 16), patch=4, heads=2)
    out = model(torch.randn(*shape))
    assert out.logits.shape == (2, 7) and [a.shape for a in out.aux_logits] == [(2, 7), (2, 7)]
    assert {k: tuple(v.shape) for k, v in out.features.items()} == {
        "stage1": (2, 8, tokens), "stage2": (2, 16, tokens), "stage3": (2, 16, tokens), "embedding": (2, 16)}
    torch.testing.assert_close(out.features["embedding"], out.features["stage3"].mean(-1), rtol=0, atol=0)
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm1d)) for m in model.stages.modules())
    out.logits.sum().backward()


def test_transformer1d_positions_matter() -> None:
    """The sinusoidal position code makes the model see the order of its patches."""
    torch.manual_seed(0)
    model = build_model("transformer1d", num_classes=3, in_channels=1, widths=(8, 8, 8)).eval()
    x = torch.randn(1, 1, 16)
    swapped = torch.cat([x[..., 4:8], x[..., :4], x[..., 8:]], dim=-1)  # the first two patches swapped
    assert not torch.allclose(model(x).logits, model(swapped).logits)


def test_transformer1d_options_are_checked() -> None:
    with pytest.raises(ValueError, match="not divisible by heads 3"):
        build_model("transformer1d", num_classes=3, in_channels=1, widths=(8, 8, 8), heads=3)
    with pytest.raises(ValueError, match=r"bad options.*'transformer1d'"):
        build_model("transformer1d", num_classes=3, in_channels=1, kernel=5)


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'") as info:
        build_model("resnet9", num_classes=10, in_channels=3)
    for name in ("convnet", "resnet8x4", "resnet32x4", "resnet110", "transformer1d"):
        assert name in str(info.value)


def test_bad_option_is_value_error() -> None:
    with pytest.raises(ValueError, match="resnet8"):
        build_model("resnet8", num_classes=10, in_channels=3, widths=(1, 2, 3))


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register("convnet")(models.ConvNet)
