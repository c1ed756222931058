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
    np.testing.assert_array_equal(layout.materialise(storage), view)


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


# --- slices, head split and merge, repeat_kv ----------------------------------------


def numpy_reshape_copies(view: np.ndarray, shape) -> bool:
    try:
        np.reshape(view, shape, copy=False)
    except ValueError:
        return True
    return False


def draw_shape_of_size(data, n: int) -> tuple[int, ...]:
    """A random shape holding n elements, size-1 axes included."""
    dims = []
    while n > 1:
        d = data.draw(st.sampled_from([k for k in range(2, n + 1) if n % k == 0]))
        dims.append(d)
        n //= d
    dims += [1] * data.draw(st.integers(0, 1))
    return tuple(data.draw(st.permutations(dims))) or (1,)


def draw_bound(data, n: int):
    return data.draw(st.none() | st.integers(-n - 2, n + 2))


def slice_on(axis: int, ndim: int, bounds: slice) -> tuple:
    return tuple(bounds if k == axis else slice(None) for k in range(ndim))


@settings(max_examples=200, deadline=None)
@given(shapes, st.data())
def test_slice_matches_numpy_basic_slicing(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    view = storage.reshape(shape).transpose(perm)
    axis = data.draw(st.integers(0, view.ndim - 1))
    start, stop = draw_bound(data, view.shape[axis]), draw_bound(data, view.shape[axis])
    step = data.draw(st.integers(1, 3))
    layout = Layout.row_major(shape).transpose(perm).slice(axis, start, stop, step)
    assert_same(layout, storage, view[slice_on(axis, view.ndim, slice(start, stop, step))])


@settings(max_examples=100, deadline=None)
@given(shapes, st.data())
def test_split_axis_is_numpy_reshape(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    view = storage.reshape(shape).transpose(perm)
    axis = data.draw(st.integers(0, view.ndim - 1))
    n = view.shape[axis]
    parts = data.draw(st.sampled_from([k for k in range(1, n + 1) if n % k == 0]))
    layout = Layout.row_major(shape).transpose(perm).split_axis(axis, parts)
    assert_same(layout, storage, view.reshape(view.shape[:axis] + (parts, n // parts) + view.shape[axis + 1:]))


@settings(max_examples=150, deadline=None)
@given(shapes.filter(lambda s: len(s) > 1), st.data())
def test_merge_axes_is_none_exactly_when_numpy_must_copy(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    view = storage.reshape(shape).transpose(perm)
    axis = data.draw(st.integers(0, view.ndim - 2))
    merged_shape = view.shape[:axis] + (view.shape[axis] * view.shape[axis + 1],) + view.shape[axis + 2:]
    layout = Layout.row_major(shape).transpose(perm).merge_axes(axis)
    assert (layout is None) == numpy_reshape_copies(view, merged_shape)
    if layout is not None:
        assert_same(layout, storage, view.reshape(merged_shape))


@settings(max_examples=150, deadline=None)
@given(shapes, st.data())
def test_repeat_kv_is_numpy_repeat(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    storage = np.arange(int(np.prod(shape)))
    layout, view = Layout.row_major(shape).transpose(perm), storage.reshape(shape).transpose(perm)
    for _ in range(data.draw(st.integers(1, 2))):  # repeats stack, also on the same axis
        axis, group = data.draw(st.integers(0, view.ndim - 1)), data.draw(st.integers(1, 3))
        layout, view = layout.repeat_kv(axis, group), np.repeat(view, group, axis=axis)
    assert_same(layout, storage, view)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.data())
def test_slice_of_a_repeated_axis(kv_heads, group, d, data):
    """A slice of a repeated axis is a view unless it cuts the repeat groups unevenly."""
    storage = np.arange(kv_heads * d)
    layout = Layout.row_major((kv_heads, d)).repeat_kv(0, group)
    view = np.repeat(storage.reshape(kv_heads, d), group, axis=0)
    n = view.shape[0]
    start, stop, step = draw_bound(data, n), draw_bound(data, n), data.draw(st.integers(1, 4))
    sliced = layout.slice(0, start, stop, step)
    kept = range(*slice(start, stop, step).indices(n))
    even = step % group == 0 or (group % step == 0 and kept.start % group == 0) or len(kept) <= 1
    assert (sliced is not None) == even
    if sliced is not None:
        assert_same(sliced, storage, view[start:stop:step])


def test_grouped_query_heads_read_kv_head_h_div_group():
    B, Hkv, group, S, D = 2, 2, 3, 4, 5
    storage = np.arange(B * Hkv * S * D)
    k = Layout.row_major((B, Hkv, S, D))
    k_per_query_head = k.repeat_kv(1, group)
    assert k_per_query_head.shape == (B, Hkv * group, S, D)
    for b, h, s, j in itertools.product(range(B), range(Hkv * group), range(S), range(D)):
        assert k_per_query_head.gamma((b, h, s, j)) == k.gamma((b, h // group, s, j))
    assert_same(k_per_query_head, storage, np.repeat(storage.reshape(B, Hkv, S, D), group, axis=1))


def test_a_repeated_axis_merges_and_splits_at_group_boundaries():
    repeated = Layout.row_major((2, 3, 4)).repeat_kv(1, 2)  # (2, 6, 4), axis 1 repeated
    storage = np.arange(24)
    view = np.repeat(storage.reshape(2, 3, 4), 2, axis=1)
    assert_same(repeated.reshape((2, 6, 2, 2)), storage, view.reshape(2, 6, 2, 2))
    assert_same(repeated.reshape((1, 2, 6, 4)), storage, view.reshape(1, 2, 6, 4))
    assert_same(repeated.merge_axes(0), storage, view.reshape(12, 4))  # (b, h) -> b*6 + h
    assert_same(repeated.split_axis(1, 3), storage, view.reshape(2, 3, 2, 4))
    assert repeated.merge_axes(1) is None  # (h // 2) * 4 + d is not one stride over h*4 + d
    assert repeated.split_axis(1, 2) is None  # rows of 3 cut the repeat groups of 2


def test_unsqueeze_expand_reshape_is_repeat_kv():
    """HF repeat_kv: (B, Hkv, S, d) -> unsqueeze(2) -> expand G -> reshape (B*Hkv*G, S, d)."""
    B, Hkv, G, S, d = 2, 2, 3, 4, 5
    storage = np.arange(B * Hkv * S * d)
    kv = storage.reshape(B, Hkv, S, d)
    layout = (Layout.row_major((B, Hkv, S, d)).reshape((B, Hkv, 1, S, d))
              .broadcast_to((B, Hkv, G, S, d)).reshape((B * Hkv * G, S, d)))
    assert layout is not None
    assert_same(layout, storage, np.repeat(kv, G, axis=1).reshape(B * Hkv * G, S, d))
    assert_same(layout.reshape((B, Hkv * G, S, d)), storage, np.repeat(kv, G, axis=1))


def test_broadcast_and_transpose_carry_the_divisors():
    storage = np.arange(6)
    layout = Layout.row_major((1, 2, 3)).repeat_kv(1, 2).broadcast_to((2, 2, 4, 3)).transpose([0, 3, 2, 1])
    view = np.broadcast_to(np.repeat(storage.reshape(1, 2, 3), 2, axis=1), (2, 2, 4, 3)).transpose(0, 3, 2, 1)
    assert_same(layout, storage, view)


def test_no_repeats_has_one_spelling():
    layout = Layout.row_major((2, 3))
    assert Layout((2, 3), (3, 1), 0, (1, 1)) == layout
    assert layout.repeat_kv(0, 1) == layout
    assert layout.repeat_kv(0, 2).divisors == (2, 1)


def test_row_major_and_contiguous_axis():
    layout = Layout.row_major((2, 3, 4))
    assert layout.is_row_major() and layout.contiguous_axis() == 2
    assert layout.slice(0, 1, 2).is_row_major()  # one row-major block, further in
    assert not layout.slice(2, 0, 2).is_row_major()
    transposed = layout.transpose([2, 0, 1])
    assert not transposed.is_row_major() and transposed.contiguous_axis() == 0
    assert layout.reshape((2, 1, 12)).is_row_major()
    assert not layout.repeat_kv(2, 2).is_row_major() and layout.repeat_kv(2, 2).contiguous_axis() is None
    assert not Layout.row_major((3,)).broadcast_to((2, 3)).is_row_major()


# --- random chains of maps ----------------------------------------------------------
# Each step draws one map and applies it to the Layout and to numpy's array. It returns
# the new layout (None when the map needs a copy), numpy's result, and whether numpy
# would have had to copy (meaningful while numpy's array is still a view of storage).


def step_transpose(data, layout, view):
    perm = data.draw(st.permutations(range(view.ndim)))
    return layout.transpose(perm), view.transpose(perm), False


def step_reshape(data, layout, view):
    shape = draw_shape_of_size(data, view.size)
    return layout.reshape(shape), view.reshape(shape), numpy_reshape_copies(view, shape)


def step_slice(data, layout, view):
    axis = data.draw(st.integers(0, view.ndim - 1))
    n = view.shape[axis]
    start = data.draw(st.integers(0, n - 1))
    stop, step = data.draw(st.integers(start + 1, n)), data.draw(st.integers(1, 2))
    return layout.slice(axis, start, stop, step), view[slice_on(axis, view.ndim, slice(start, stop, step))], False


def step_split(data, layout, view):
    axis = data.draw(st.integers(0, view.ndim - 1))
    n = view.shape[axis]
    parts = data.draw(st.sampled_from([k for k in range(1, n + 1) if n % k == 0]))
    shape = view.shape[:axis] + (parts, n // parts) + view.shape[axis + 1:]
    return layout.split_axis(axis, parts), view.reshape(shape), numpy_reshape_copies(view, shape)


def step_merge(data, layout, view):
    axis = data.draw(st.integers(0, view.ndim - 2))
    shape = view.shape[:axis] + (view.shape[axis] * view.shape[axis + 1],) + view.shape[axis + 2:]
    return layout.merge_axes(axis), view.reshape(shape), numpy_reshape_copies(view, shape)


def step_repeat_kv(data, layout, view):
    axis, group = data.draw(st.integers(0, view.ndim - 1)), data.draw(st.integers(1, 3))
    return layout.repeat_kv(axis, group), np.repeat(view, group, axis=axis), False


def step_broadcast(data, layout, view):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=1)))
    shape = lead + tuple(data.draw(st.integers(1, 3)) if n == 1 else n for n in view.shape)
    return layout.broadcast_to(shape), np.broadcast_to(view, shape), False


def applicable_steps(view):
    steps = [step_transpose, step_reshape, step_slice, step_split]
    if view.ndim > 1:
        steps.append(step_merge)
    if view.size <= 48:  # keep the arrays small
        steps += [step_repeat_kv, step_broadcast]
    return steps


@settings(max_examples=300, deadline=None)
@given(shapes, st.data())
def test_random_chains_of_maps_match_numpy(shape, data):
    storage = np.arange(int(np.prod(shape)))
    layout, view = Layout.row_major(shape), storage.reshape(shape)
    plain = True  # no repeat or broadcast yet: then a view exists exactly when numpy has one
    for _ in range(data.draw(st.integers(1, 6))):
        step = data.draw(st.sampled_from(applicable_steps(view)))
        new_layout, new_view, numpy_copies = step(data, layout, view)
        if plain:
            assert (new_layout is None) == numpy_copies, step.__name__
        if new_layout is None:
            continue
        layout, view = new_layout, new_view
        plain &= step not in (step_repeat_kv, step_broadcast)
        assert_same(layout, storage, view)
