"""Sequential: one buffer (also after pickling), caches, losses with item weights."""

import copy
import pickle

import numpy as np
import pytest

import cyrnn
from cyrnn.training import train_step


def make_model(backend="auto"):
    return cyrnn.Sequential([cyrnn.LSTM(2, 4, return_sequences=False, backend=backend,
                                        random_state=0),
                             cyrnn.Dense(4, 1, random_state=1)])


@pytest.mark.parametrize("clone", [pickle.loads, copy.deepcopy])
def test_copies_keep_one_buffer(clone, backend):
    model = make_model(backend)
    restored = clone(pickle.dumps(model)) if clone is pickle.loads else clone(model)
    x = np.random.default_rng(0).normal(size=(3, 5, 2))
    np.testing.assert_array_equal(restored.forward(x), model.forward(x))
    restored.params.data[...] = 0  # a write to the model buffer reaches every layer
    assert not restored.layers[0].params["weight_ih_l0"].any()
    assert model.layers[0].params["weight_ih_l0"].any()
    # the restored buffer starts on a cache line, as a new one does (the kernels'
    # 64-byte weight loads; NumPy's own allocations are 16-byte aligned)
    for m in (model, restored):
        assert m.params.data.ctypes.data % 64 == 0 and m.params.grad.ctypes.data % 64 == 0
    assert restored.params.data.flags.c_contiguous and restored.params.data.flags.writeable


@pytest.mark.parametrize("clone", [pickle.loads, copy.deepcopy])
def test_a_lone_layer_restored_keeps_aligned_weights(clone):
    """A layer pickled or copied on its own (not inside a model) restores its buffer
    on a cache line too, with the same values and a working forward."""
    layer = cyrnn.LSTM(3, 8, random_state=0)
    restored = clone(pickle.dumps(layer)) if clone is pickle.loads else clone(layer)
    assert restored.params.data.ctypes.data % 64 == 0
    assert restored.params.grad.ctypes.data % 64 == 0
    np.testing.assert_array_equal(restored.params.data, layer.params.data)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(restored(x)[0], layer(x)[0])
    restored.params.data[...] = 0  # the layer reads its (new) buffer
    assert not restored.params["weight_ih_l0"].any()


def test_a_shallow_copy_of_a_buffer_shares_its_arrays():
    """copy.copy of a layer's buffer inside a model (a slice, not on a cache line)
    keeps sharing the model's storage: only pickle and deepcopy realign."""
    model = cyrnn.Sequential([cyrnn.LSTM(3, 5), cyrnn.LSTM(5, 7)])
    params = model.layers[1].params
    shallow = copy.copy(params)
    assert np.shares_memory(shallow.data, model.params.data)
    assert np.shares_memory(shallow.grad, model.params.grad)
    assert shallow.data is params.data and shallow.names == params.names


def test_training_step_frees_backward_caches(rng):
    model = make_model()
    train_step(model, cyrnn.optim.SGD(model, lr=0.1), "mse", rng.normal(size=(3, 5, 2)),
               rng.normal(size=(3, 1)))
    assert all(layer._cache is None for layer in model.layers)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="no effect"):
        cyrnn.GRU(2, 3, dropout=0.5)


def test_per_step_weights_equal_masking(rng):
    pred, target = rng.normal(size=(4, 6, 2)), rng.normal(size=(4, 6, 2))
    mask = rng.random((4, 6)) > 0.3
    a = cyrnn.losses.mse(pred, target, mask=mask)
    b = cyrnn.losses.mse(pred, target, sample_weight=mask.astype(float))
    assert a[0] == pytest.approx(b[0])
    np.testing.assert_allclose(a[1], b[1])


def test_values_too_large_for_float32_are_named():
    with pytest.raises(ValueError, match="too large for float32"):
        cyrnn.GRU(2, 3)(np.full((1, 2, 2), 1e300))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_skipping_the_input_gradient_changes_no_parameter_gradient(bidirectional, backend, rng):
    model = cyrnn.Sequential([cyrnn.GRU(2, 4, 2, bidirectional=bidirectional, backend=backend,
                                        dtype=np.float64, random_state=0),
                              cyrnn.Dense(8 if bidirectional else 4, 1, dtype=np.float64)])
    x, g = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 5, 1))
    grads = []
    for input_grad in (True, False):
        model.zero_grad()
        model.forward(x, training=True)
        dx = model.backward(g, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append(model.params.grad.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_calls_as_the_readme_says(rng):
    """``layer(x, training=False)`` raised TypeError (only forward took it) and a
    Sequential was not callable; a torch-style ``layer(x, state)`` names where states go."""
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    layer = cyrnn.LSTM(3, 4, random_state=0)
    out, _ = layer(x, training=False)
    assert layer._cache is None  # inference: no backward cache
    np.testing.assert_array_equal(out, layer.forward(x, training=False)[0])
    layer(x, training=True)
    assert layer._cache is not None
    model = cyrnn.Sequential([cyrnn.GRU(3, 4, random_state=0), cyrnn.Dense(4, 2, random_state=0)])
    np.testing.assert_array_equal(model(x), model.forward(x))
    state = (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="initial states go in initial_state="):
        layer(x, state)
