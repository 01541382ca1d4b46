"""Regularized ZCA preprocessing: round trips, whitening, artifact reload, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from kdistill.errors import ArtifactError, DataError
from kdistill.datasets.preprocess import (
    PREPROCESSORS,
    RegularizedZCA,
    fit_preprocessor,
    preprocessor_from_state,
)


def _images(rng, n=400, shape=(4, 4, 3)):
    """Correlated RGB-like images in 0-255 with varying brightness and contrast."""
    base = rng.standard_normal((n, *shape)) @ rng.standard_normal((shape[-1], shape[-1]))
    return 120 + rng.uniform(10, 50, (n, 1, 1, 1)) * base + rng.uniform(-30, 30, (n, 1, 1, 1))


def test_zca_part_round_trips(rng):
    """The whitening part is inverted exactly, for any input (not only transform outputs)."""
    zca = RegularizedZCA.fit(_images(rng))
    u = rng.standard_normal((7, 48)) * 3
    np.testing.assert_allclose(zca.zca_inverse(zca.zca(u)), u, rtol=1e-10, atol=1e-10)


def test_transform_of_inverse_round_trips(rng):
    """transform(inverse(z)) == z for transformed images, and the inverse has the
    training set's pixel scale (layer norm itself is not invertible)."""
    x = _images(rng)
    zca = RegularizedZCA.fit(x)
    z = zca.transform(x[:20])
    assert z.dtype == np.float32 and z.shape == x[:20].shape
    back = zca.inverse(z)
    np.testing.assert_allclose(zca.transform(back), z, rtol=1e-5, atol=1e-5)
    # each image comes back to (its layer norm) * mean std + mean mean: same per-image
    # structure, average brightness and contrast
    flat = back.reshape(20, -1)
    np.testing.assert_allclose(flat.mean(1), zca.pixel_mean, rtol=1e-4)
    np.testing.assert_allclose(flat.std(1), zca.pixel_std, rtol=1e-4)
    corr = np.corrcoef(flat[0], x[0].reshape(-1))[0, 1]
    assert corr > 0.999


def test_whitening_in_the_unregularized_limit(rng):
    """With a vanishing regularizer the transformed training data has identity covariance
    on the subspace layer norm leaves (it removes each image's mean: one zero direction)."""
    x = _images(rng, n=3000, shape=(3, 3, 2))
    zca = RegularizedZCA.fit(x, strength=1e-9)
    z = zca.transform(x).reshape(len(x), -1).astype(np.float64)
    cov = np.cov(z, rowvar=False, bias=True)
    eig = np.sort(np.linalg.eigvalsh(cov))
    assert abs(eig[0]) < 1e-6
    np.testing.assert_allclose(eig[1:], 1.0, atol=1e-4)
    # ZCA (not PCA) whitening: the symmetric W keeps images close to their layer norm
    assert np.allclose(zca._w, zca._w.T)
    # with the default strength 0.1 the eigenvalues are lam / (lam + 0.1 mean(lam)) < 1
    reg = RegularizedZCA.fit(x)
    eig_reg = np.sort(np.linalg.eigvalsh(np.cov(reg.transform(x).reshape(len(x), -1), rowvar=False, bias=True)))
    assert eig_reg[-1] < 1.0 and eig_reg[1] < eig_reg[-1] and eig_reg[1] > 0.01


def test_state_reload_reproduces_the_transform_exactly(rng, tmp_path):
    x = _images(rng)
    zca = fit_preprocessor("zca", x)
    state = zca.state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    np.savez(tmp_path / "s.npz", **state)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        again = preprocessor_from_state("zca", {k: f[k] for k in f.files})
    np.testing.assert_array_equal(again.transform(x[:10]), zca.transform(x[:10]))
    np.testing.assert_array_equal(again.inverse(zca.transform(x[:3])), zca.inverse(zca.transform(x[:3])))
    assert PREPROCESSORS["zca"] is RegularizedZCA


def test_artifact_round_trip_and_evaluation_use_the_stored_transform(tmp_path):
    """A distilled artifact with preprocess="zca" stores the fitted transform; after
    reload it transforms new data identically and evaluation uses it."""
    import kdistill
    from kdistill.runtime.evaluate import evaluate_artifact

    res = kdistill.distill(preprocess="zca", steps=2, ipc=1, target_batch=100, eval_every=0, seed=3)
    assert res.transform.name == "zca"
    path = res.save(tmp_path / "a.npz")
    art = kdistill.load(path)
    assert art.transform.name == "zca"
    from kdistill.datasets.digits import load_digits  # the embedded data

    raw = load_digits(None).x_test[:15]
    np.testing.assert_array_equal(art.transform.transform(raw), res.transform.transform(raw))
    assert art.transform.inverse(art.images).shape == art.images.shape
    out = evaluate_artifact(art)
    assert out["distilled_acc"] == pytest.approx(res.metrics["distilled_acc"])


def test_malformed_state_and_wrong_shapes(rng):
    zca = RegularizedZCA.fit(_images(rng, n=50, shape=(2, 2, 1)))
    bad = dict(zca.state(), eigvals=np.ones(3))
    with pytest.raises(ArtifactError, match="inconsistent"):
        preprocessor_from_state("zca", bad)
    with pytest.raises(DataError, match="fitted on images of 4 values"):
        zca.transform(np.zeros((2, 3, 3, 1)))
