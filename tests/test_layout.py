"""Access maps (Layout) against numpy indexing of a materialised array."""
import itertools

from hypothesis import given, settings, strategies as st
import numpy as np

from moa_edge.moa import Layout

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def assert_same(layout: Layout, storage: np.ndarray, view: np.ndarray):
    assert layout.shape == view.shape
    for index in itertools.product(*map(range, view.shape)):
        assert storage[layout.gamma(index)] == view[index]


@settings(max_examples=200, deadline=None)
@given(shapes, st.data())
def test_transpose_matches_numpy(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    assert_same(Layout.row_major(shape).transpose(perm), storage, storage.reshape(shape).transpose(perm))


@settings(max_examples=300, deadline=None)
@given(shapes, st.data())
def test_reshape_of_a_transposed_view_matches_numpy(shape, data):
    """A reshape is a view exactly when numpy can do it without a copy."""
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    view = storage.reshape(shape).transpose(perm)
    n, dims = view.size, []
    while n > 1:
        d = data.draw(st.sampled_from([k for k in range(2, n + 1) if n % k == 0]))
        dims.append(d)
        n //= d
    dims += [1] * data.draw(st.integers(0, 2))
    new_shape = tuple(data.draw(st.permutations(dims))) or (1,)
    layout = Layout.row_major(shape).transpose(perm).reshape(new_shape)
    try:
        numpy_view = view.view()
        numpy_view.shape = new_shape  # raises when a copy would be needed
    except AttributeError:
        numpy_view = None
    assert (layout is None) == (numpy_view is None)
    if layout is not None:
        assert_same(layout, storage, numpy_view)


@settings(max_examples=200, deadline=None)
@given(shapes, st.data())
def test_broadcast_matches_numpy(shape, data):
    extra = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = tuple(extra) + tuple(n if data.draw(st.booleans()) or n != 1 else data.draw(st.integers(1, 3))
                                  for n in shape)
    storage = np.arange(int(np.prod(shape)))
    assert_same(Layout.row_major(shape).broadcast_to(target), storage,
                np.broadcast_to(storage.reshape(shape), target))


def test_head_split_of_a_3d_projection():
    """(B, S, H*d) seen as (B, H, S, d): head h is the contiguous slice h*d:(h+1)*d."""
    B, S, H, d = 2, 5, 3, 4
    storage = np.arange(B * S * H * d)
    layout = Layout.row_major((B, S, H * d)).reshape((B, S, H, d)).transpose([0, 2, 1, 3])
    assert_same(layout, storage, storage.reshape(B, S, H, d).transpose(0, 2, 1, 3))
