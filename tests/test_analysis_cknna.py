"""CKNNA (Huh et al. 2024): the metric's defining properties and agreement with a literal implementation."""

import math

import numpy as np
import pytest
import torch

from viral.analysis import cknna


def _features(n=64, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q


def _literal_cknna(A, B, k):
    """The published definition written out with Python loops: linear kernels on L2-normalised rows,
    alpha_ij = [i != j and j among the k nearest of i in both], unbiased HSIC (Song et al. 2012, eq. 5)."""
    A = [row / np.linalg.norm(row) for row in np.asarray(A, dtype=np.float64)]
    B = [row / np.linalg.norm(row) for row in np.asarray(B, dtype=np.float64)]
    n = len(A)
    K = [[float(A[i] @ A[j]) for j in range(n)] for i in range(n)]
    L = [[float(B[i] @ B[j]) for j in range(n)] for i in range(n)]

    def neighbours(G):
        return [set(sorted((j for j in range(n) if j != i), key=lambda j: -G[i][j])[:k]) for i in range(n)]

    def hsic(X, Y):
        tr = sum(X[i][j] * Y[j][i] for i in range(n) for j in range(n))
        sx = sum(map(sum, X))
        sy = sum(map(sum, Y))
        cross = sum(X[i][j] * Y[j][l] for i in range(n) for j in range(n) for l in range(n))
        return (tr + sx * sy / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))

    def align(nx, ny, X, Y):
        alpha = [[1.0 if (j != i and j in nx[i] and j in ny[i]) else 0.0 for j in range(n)] for i in range(n)]
        Xm = [[alpha[i][j] * X[i][j] for j in range(n)] for i in range(n)]
        Ym = [[alpha[i][j] * Y[i][j] for j in range(n)] for i in range(n)]
        return hsic(Xm, Ym)

    nk, nl = neighbours(K), neighbours(L)
    return align(nk, nl, K, L) / math.sqrt(align(nk, nk, K, K) * align(nl, nl, L, L))


def test_identical_features_score_one():
    x = _features()
    assert cknna(x, x, k=10) == pytest.approx(1.0, abs=1e-9)
    assert cknna(x, x.clone(), k=5, normalize=False) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("normalize", [True, False])
def test_invariant_to_rotation_and_isotropic_scaling_of_either_side(normalize):
    x = _features(seed=1)
    y = x @ torch.randn(32, 24, generator=torch.Generator().manual_seed(2)) + 0.5 * _features(d=24, seed=3)
    base = cknna(x, y, k=10, normalize=normalize)
    assert 0.2 < base < 1.0
    q = _orthogonal(32, seed=4)
    assert cknna(x @ q, y, k=10, normalize=normalize) == pytest.approx(base, abs=1e-6)
    assert cknna(x, y @ _orthogonal(24, seed=5), k=10, normalize=normalize) == pytest.approx(base, abs=1e-6)
    assert cknna(7.5 * x, y, k=10, normalize=normalize) == pytest.approx(base, abs=1e-6)
    assert cknna(x, 0.01 * y, k=10, normalize=normalize) == pytest.approx(base, abs=1e-6)


def test_independent_random_features_score_near_zero():
    scores = [cknna(_features(200, 64, seed=10 + s), _features(200, 48, seed=100 + s), k=10) for s in range(3)]
    assert all(abs(s) < 0.1 for s in scores), scores


def test_more_shared_structure_scores_higher():
    x = _features(128, 32, seed=6)
    noisy = [cknna(x, x + sigma * _features(128, 32, seed=7), k=10) for sigma in (0.1, 0.5, 2.0)]
    assert noisy[0] > noisy[1] > noisy[2]


def test_matches_literal_published_definition_on_a_fixed_example():
    a = _features(18, 6, seed=8)
    b = a[:, :4] ** 2 + 0.3 * _features(18, 4, seed=9)
    expected = _literal_cknna(a.numpy(), b.numpy(), k=5)
    assert cknna(a, b, k=5) == pytest.approx(expected, abs=1e-10)
    assert 0.0 < expected < 1.0


def test_bad_inputs_are_named():
    x = _features(10, 4)
    with pytest.raises(ValueError, match="same samples"):
        cknna(x, x[:9])
    with pytest.raises(ValueError, match="k=10"):
        cknna(x, x, k=10)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        cknna(x[None], x)


def test_layer_cknna_teacher_sees_the_students_padded_square(tiny_llava_path):
    """In `pad` mode the student sees the image padded to a square; the teacher must see that same square."""
    from PIL import Image

    from viral.analysis.cknna import layer_cknna
    from viral.analysis.report import Example
    from viral.data.images import apply_aspect
    from viral.infer import Predictor

    predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu")
    assert predictor.image_aspect == "pad"
    grid = predictor.model.config.vision_config.image_size // predictor.model.config.vision_config.patch_size

    class RecordingTeacher:
        seen: list = []

        def features(self, images):
            self.seen.extend(images)
            return torch.randn(len(images), grid * grid, 8)

    wide = Image.new("RGB", (64, 24), "red")
    teacher = RecordingTeacher()
    layer_cknna(predictor, [Example(wide, "What colour ?")], k=3, teacher=teacher)
    [seen] = teacher.seen
    expected = apply_aspect(wide, "pad", predictor.processor.image_processor)
    assert seen.size == (64, 64) and seen.tobytes() == expected.tobytes()
