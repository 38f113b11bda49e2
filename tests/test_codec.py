"""The JSON codec carries answers faithfully and refuses what it did not write."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.grader import codec


@pytest.mark.parametrize("value", [None, True, 3, 2**70, 1.5, "text", [1, 2.0], (1, "a"), {"a": [1, {"b": None}]},
                                   np.int64(7), np.float32(0.5)])
def test_roundtrip_plain_values(value):
    back = codec.loads(codec.dumps(value))
    assert back == value and type(back) is type(value)


def test_roundtrip_nan_inf_and_arrays():
    back = codec.loads(codec.dumps([float("nan"), float("-inf")]))
    assert np.isnan(back[0]) and back[1] == float("-inf")
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert np.array_equal(codec.loads(codec.dumps(array)), array) and codec.loads(codec.dumps(array)).dtype == np.int16
    tensor = torch.randn(2, 3, requires_grad=True)
    back = codec.loads(codec.dumps(tensor))
    assert isinstance(back, torch.Tensor) and torch.equal(back, tensor.detach())
    assert codec.loads(codec.dumps(torch.ones(2, dtype=torch.bfloat16))).dtype == torch.bfloat16


def test_unsupported_objects_become_placeholders():
    assert isinstance(codec.loads(codec.dumps(nn.LSTM(2, 2))), codec.Unsupported)
    assert isinstance(codec.loads(codec.dumps(object())), codec.Unsupported)


def test_layers_travel_as_settings_and_state():
    layer = nn.Conv2d(2, 3, (3, 1), stride=2, padding=(1, 0), bias=False).double()
    again = codec.loads(codec.dumps(nn.Sequential(layer, nn.ReLU())))
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64)
    assert isinstance(again[0], nn.Conv2d) and again[0].bias is None and again[0].stride == (2, 2)
    torch.testing.assert_close(again(x), torch.relu(layer(x)), rtol=0, atol=0)


def test_layer_settings_cannot_make_the_grader_allocate():
    data = json.loads(codec.dumps(nn.Linear(2, 2)))
    data["config"]["in_features"] = 10**12                 # settings that disagree with the state
    with pytest.raises(codec.DecodeError, match="does not match"):
        codec.decode(data)


def test_layer_settings_that_size_the_work_are_bounded():
    data = json.loads(codec.dumps(nn.Conv2d(2, 1, 3, padding=1, bias=False)))
    data["config"]["padding"] = [2500, 2500]                  # tiny weights, a huge output on any input
    with pytest.raises(codec.DecodeError, match="padding must be at most"):
        codec.decode(data)
    same = nn.Conv2d(2, 1, 3, padding="same", bias=False)
    assert codec.loads(codec.dumps(same)).padding == "same"


def test_npy_header_cannot_make_the_grader_allocate():
    import base64
    import io
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    raw = buffer.getvalue().replace(b"(3,)", b"(1000,)")   # a header claiming 1000 values over the bytes of 3
    with pytest.raises(codec.DecodeError):
        codec.decode({"__ndarray__": base64.b64encode(raw).decode()})


@pytest.mark.parametrize("text", ['{"__pickle__": "x"}', "not json", '{"__ndarray__": "@@@"}', '{}',
                                  json.dumps({"__ndarray__": "gASVAAAAAAAAAAA="})])
def test_malformed_data_is_a_decode_error(text):
    with pytest.raises(codec.DecodeError):
        codec.loads(text)


def test_object_arrays_are_never_unpickled(monkeypatch):
    import base64, io, pickle  # noqa: E401
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    payload = json.dumps({"__ndarray__": base64.b64encode(buffer.getvalue()).decode()})
    unpickled = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unpickled.append("load"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append("loads"))
    buffer.seek(0)
    np.load(buffer, allow_pickle=True)                     # control: numpy's unpickling goes through the patch
    assert unpickled == ["load"]
    with pytest.raises(codec.DecodeError):
        codec.loads(payload)
    assert unpickled == ["load"]                           # the codec never reached pickle
