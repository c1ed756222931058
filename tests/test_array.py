"""The paper's MoA primitives (rho, iota, gamma, rav, psi, take, drop) against numpy."""
import itertools
import math

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from moa_edge.moa import Layout, drop, gamma, iota, psi, rav, rho, take

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def arange_of(shape) -> np.ndarray:
    return np.arange(math.prod(shape)).reshape(shape)


@pytest.mark.parametrize("index, offset", [((0, 0), 0), ((0, 3), 3), ((1, 2), 6), ((2, 1), 9)])
def test_gamma_spot_checks_of_the_paper(index, offset):
    assert gamma(index, (3, 4)) == offset


def test_gamma_rejects_an_index_outside_the_shape():
    with pytest.raises(AssertionError):
        gamma((3, 0), (3, 4))


@settings(max_examples=100, deadline=None)
@given(shapes, st.data())
def test_gamma_is_numpy_row_major_offset(shape, data):
    index = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    assert gamma(index, shape) == np.ravel_multi_index(index, shape) == Layout.row_major(shape).gamma(index)


def test_rho_and_rav():
    A = arange_of((2, 3, 4))
    assert rho(A) == (2, 3, 4)
    assert rho(np.float32(1.0)) == ()
    assert rav(A.transpose(2, 0, 1)).tolist() == A.transpose(2, 0, 1).ravel().tolist()


def test_iota_of_a_number():
    assert iota(5).tolist() == [0, 1, 2, 3, 4]
    assert iota(0).tolist() == []


@settings(max_examples=50, deadline=None)
@given(shapes)
def test_iota_of_a_shape_lists_every_index_in_row_major_order(shape):
    indices = iota(shape)
    assert rho(indices) == shape + (len(shape),)
    assert [tuple(v) for v in indices.reshape(-1, len(shape))] == list(itertools.product(*map(range, shape)))
    # gamma numbers the index vectors of iota s in order: gamma over iota s is iota (prod s).
    assert [gamma(v, shape) for v in indices.reshape(-1, len(shape))] == iota(math.prod(shape)).tolist()


def test_take_and_drop():
    assert take(2, (3, 4, 5)) == (3, 4)
    assert drop(2, (3, 4, 5)) == (5,)
    assert take(0, (3, 4)) == () and drop(0, (3, 4)) == (3, 4)


@settings(max_examples=100, deadline=None)
@given(shapes, st.data())
def test_psi_matches_numpy_indexing_for_full_and_partial_indices(shape, data):
    A = arange_of(shape)
    rank = data.draw(st.integers(0, len(shape)))
    index = tuple(data.draw(st.integers(0, n - 1)) for n in shape[:rank])
    cell = psi(index, A)
    assert rho(cell) == drop(len(index), rho(A))  # rho(i psi A) = (tau i) drop (rho A)
    np.testing.assert_array_equal(cell, A[index])


def test_psi_on_the_papers_test_instance():
    Q = arange_of((3, 4))
    assert psi((1, 2), Q) == 6
    assert psi((2,), Q).tolist() == [8, 9, 10, 11]
    assert psi((), Q).tolist() == Q.tolist()
