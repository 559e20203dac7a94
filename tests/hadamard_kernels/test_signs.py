"""The shared sign-vector type (hadamard_kernels.signs): validation, caching, the RHT convention."""

import math

import pytest
import scipy.linalg
import torch

from hadamard_kernels import signs as S
from hadamard_kernels.signs import DEFAULT_SIGN_VECTOR, SignVector, as_sign_vector, random_sign_vector
from tests.conftest import DEVICE


@pytest.mark.parametrize("form", ["tensor", "list", "tuple", "signvector", "int8", "float64"])
def test_forms_give_the_same_vector(form):
    vals = [1, -1, -1, 1, 1, 1, -1, 1]
    obj = {"tensor": torch.tensor(vals, dtype=torch.float32, device=DEVICE), "list": vals, "tuple": tuple(vals),
           "signvector": SignVector(vals), "int8": torch.tensor(vals, dtype=torch.int8),
           "float64": torch.tensor(vals, dtype=torch.float64, device=DEVICE)}[form]
    sv = as_sign_vector(obj, 8)
    assert isinstance(sv, SignVector) and sv.values == tuple(vals)
    assert sv == SignVector(vals) and hash(sv) == hash(SignVector(vals))


@pytest.mark.parametrize("bad,exc,match", [
    (torch.zeros(4), ValueError, r"\+1 or -1, got 0.0 at index 0"),
    (torch.full((4,), 2.0), ValueError, r"\+1 or -1"),
    ([1, -1, 0.5, 1], ValueError, "at index 2"),
    ([1, -1, True, 1], ValueError, "at index 2"),
    ([1, -1, float("nan"), 1], ValueError, "at index 2"),
    ([1, "a", 1, 1], ValueError, "at index 1"),
    (torch.ones(2, 2), ValueError, "1-D"),
    ([], ValueError, "empty"),
    ("++--", TypeError, "SignVector, tuple, list"),
    (3, TypeError, "SignVector, tuple, list"),
])
def test_bad_vectors_are_refused(bad, exc, match):
    with pytest.raises(exc, match=match):
        as_sign_vector(bad)


def test_wrong_length_names_the_argument():
    with pytest.raises(ValueError, match="my_signs has 3 entries but the transform size is 4"):
        as_sign_vector([1, 1, 1], 4, "my_signs")


def test_tensor_validated_once_per_version(monkeypatch):
    t = torch.tensor([1.0, -1.0, 1.0, 1.0], device=DEVICE)
    built = []
    real_init = SignVector.__init__

    def counting_init(self, values):
        built.append(1)
        real_init(self, values)

    monkeypatch.setattr(SignVector, "__init__", counting_init)
    a = as_sign_vector(t, 4)
    b = as_sign_vector(t, 4)
    assert a is b and len(built) == 1  # the second call reads nothing from the tensor
    t[0] = -1.0  # an in-place change bumps the version: validated again
    c = as_sign_vector(t, 4)
    assert len(built) == 2 and c.values == (-1, -1, 1, 1)
    t[1] = 0.0
    with pytest.raises(ValueError, match="at index 1"):
        as_sign_vector(t, 4)


def test_random_sign_vector_is_known_valid_and_reproducible():
    s = random_sign_vector(32, seed=7)
    assert torch.equal(s, random_sign_vector(32, seed=7))
    assert set(s.tolist()) <= {-1.0, 1.0}
    hit = S._TENSOR_CACHE.get(id(s))
    assert hit is not None and hit[0]() is s  # registered as validated: no read-back on first use
    with pytest.raises(ValueError):
        random_sign_vector(0)


def test_cached_copies_are_not_handed_out():
    sv = SignVector(DEFAULT_SIGN_VECTOR)
    t = sv.tensor(DEVICE)
    t.mul_(4)
    assert sv.tensor(DEVICE).abs().max().item() == 1.0
    assert torch.equal(sv._cached(DEVICE), torch.tensor(DEFAULT_SIGN_VECTOR, dtype=torch.float32, device=DEVICE))


@pytest.mark.parametrize("d", [2, 16, 128])
def test_rht_convention(d):
    s = random_sign_vector(d, seed=d)
    sv = as_sign_vector(s)
    r = S.rht_matrix_f64(sv)
    h = torch.tensor(scipy.linalg.hadamard(d), dtype=torch.float64)
    assert torch.equal(r, torch.diag(s.double()) @ h / math.sqrt(d))
    assert torch.allclose(r @ r.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.equal(sv.pm1_matrix(False, "cpu", torch.float64), torch.diag(s.double()) @ h)
    assert torch.equal(sv.pm1_matrix(True, "cpu", torch.float64), h @ torch.diag(s.double()))
    assert torch.equal(sv.rht_matrix("cpu", torch.float64), r)


def test_tensor_cache_is_bounded():
    for _ in range(S._TENSOR_CACHE_MAX + 10):
        as_sign_vector(torch.ones(4))
    assert len(S._TENSOR_CACHE) <= S._TENSOR_CACHE_MAX
