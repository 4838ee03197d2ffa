"""Head replacement for every family, freezing, and --weights PATH / imagenet / none."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from conftest import assert_user_error, run_tl_subprocess
from tl.runtime.errors import TLError
from tl.train.models import ARCHS, build_model, freeze, get_head, head_parameter_names, replace_head

EXPECTED_HEAD = {
    "vgg": lambda m: m.classifier[6],
    "resnet": lambda m: m.fc,
    "mobilenet": lambda m: m.classifier[3],
    "efficientnet": lambda m: m.classifier[1],
    "squeezenet": lambda m: m.classifier[1],  # a 1x1 conv, not a Linear
}


def _outputs(head: nn.Module) -> int:
    return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features


def _inputs(head: nn.Module) -> int:
    return head.in_channels if isinstance(head, nn.Conv2d) else head.in_features


def _family(arch: str) -> str:
    return next(f for f in EXPECTED_HEAD if arch.startswith(f))


# Values are compared on real weights for one model of each family; the bigger VGGs (same
# class, same head, only deeper) are built on the meta device to keep the suite fast.
REAL = {"vgg11", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "squeezenet1_1"}


@pytest.mark.parametrize("arch", ARCHS)
def test_replace_head_every_family(arch):
    device = torch.device("cpu" if arch in REAL else "meta")
    torch.manual_seed(0)
    with device:
        model = torchvision.models.get_model(arch, weights=None).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        before_params = dict(model.named_parameters())
        old_head = EXPECTED_HEAD[_family(arch)](model)
        assert isinstance(old_head, (nn.Linear, nn.Conv2d)) and _outputs(old_head) == 1000

        replace_head(model, arch, 3)

        head = EXPECTED_HEAD[_family(arch)](model)
        assert head is get_head(model, arch) and head is not old_head
        assert _outputs(head) == 3 and _inputs(head) == _inputs(old_head) and type(head) is type(old_head)
        after = model.state_dict()
        head_keys = {k for k in after if after[k].shape != before.get(k, after[k]).shape}
        assert len(head_keys) == 2  # weight and bias of the head, nothing else changed shape
        assert set(after) == set(before)
        for name, p in model.named_parameters():
            if name not in head_keys:
                assert p is before_params[name], name  # the very same tensors, not copies
        if device.type == "cpu":
            for k, v in before.items():
                if k not in head_keys:
                    assert torch.equal(v, after[k]), k
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_head_parameter_names_match_state_dict():
    assert head_parameter_names("vgg16") == ("classifier.6.weight", "classifier.6.bias")
    assert head_parameter_names("resnet18") == ("fc.weight", "fc.bias")
    state = build_model("resnet18", 2).state_dict()
    assert all(name in state for name in head_parameter_names("resnet18"))


def test_freeze_features_and_none():
    model = build_model("resnet18", 4)
    n_head = sum(p.numel() for p in model.fc.parameters())
    assert freeze(model, "resnet18", "features") == n_head
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert freeze(model, "resnet18", "none") == sum(p.numel() for p in model.parameters())
    with pytest.raises(TLError, match="--freeze"):
        freeze(model, "resnet18", "head")


def test_build_model_errors():
    with pytest.raises(TLError, match="unknown architecture"):
        build_model("alexnet", 3)
    with pytest.raises(TLError, match="at least 2 classes"):
        build_model("resnet18", 1)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A torchvision resnet18 state_dict file, as a user would download it."""
    torch.manual_seed(123)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.state_dict()


def test_weights_path_loads_everything_but_the_head(resnet_weights):
    path, ref = resnet_weights
    model = build_model("resnet18", 5, weights=path)
    state = model.state_dict()
    assert state["fc.weight"].shape == (5, 512)
    for k, v in ref.items():
        if not k.startswith("fc."):
            assert torch.equal(state[k], v), k


def test_weights_path_accepts_a_tl_checkpoint(make_checkpoint):
    ckpt = make_checkpoint("resnet18", image_size=32)  # 4 classes; the head is replaced anyway
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    model = build_model("resnet18", 2, weights=ckpt)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    assert model.fc.out_features == 2


def test_weights_path_errors(resnet_weights, tmp_path):
    path, _ = resnet_weights
    with pytest.raises(TLError, match="does not match mobilenet_v3_small"):
        build_model("mobilenet_v3_small", 3, weights=path)
    with pytest.raises(TLError, match="file not found"):
        build_model("resnet18", 3, weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a state dict")
    with pytest.raises(TLError, match="not a loadable state_dict"):
        build_model("resnet18", 3, weights=junk)
    listy = tmp_path / "list.pth"
    torch.save([1, 2, 3], listy)
    with pytest.raises(TLError, match="state_dict of tensors"):
        build_model("resnet18", 3, weights=listy)


def test_cli_weights_path_mismatch(tl_cli, synth_data, resnet_weights, tmp_path):
    path, _ = resnet_weights
    r = tl_cli("train", synth_data, "--arch", "mobilenet_v3_small", "--weights", path, "--image-size", "32",
               "--epochs", "1", "--out", tmp_path / "run", "--workers", "0")
    assert_user_error(r, "does not match mobilenet_v3_small")


def test_imagenet_without_internet_suggests_path_or_none(synth_data, tmp_path):
    # Deterministic offline: an empty torch cache and every proxy pointing at a closed local port.
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    r = run_tl_subprocess("train", synth_data, "--arch", "mobilenet_v3_small", "--weights", "imagenet",
                          "--image-size", "32", "--epochs", "1", "--out", tmp_path / "run", "--workers", "0",
                          env=env, timeout=300)
    assert_user_error(r, "ImageNet weights", "--weights PATH", "--weights none")
    assert not (tmp_path / "run" / "best.pt").exists()
