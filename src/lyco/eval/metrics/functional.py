"""The metrics of the evaluation framework as pure numpy functions on feature matrices (docs/EVALUATION.md §5).

Rows are items (images), columns are feature dimensions.  Everything is computed in float64.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-12


def as_matrix(z: np.ndarray | list) -> np.ndarray:
    a = np.asarray(z, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected a (items, dims) feature matrix, got shape {a.shape}")
    return a


def normalize(z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    a = as_matrix(z)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, EPS)


def centroid(z: np.ndarray) -> np.ndarray:
    """z̄: the mean of the normalised rows."""
    return normalize(z).mean(axis=0)


def image_similarity(ref: np.ndarray, gen: np.ndarray) -> float:
    """S_C: mean cosine over all (reference, generated) pairs = ⟨z̄1, z̄2⟩ (§5.1); higher is better."""
    return float(centroid(ref) @ centroid(gen))


def all_pairs_cosine(ref: np.ndarray, gen: np.ndarray) -> float:
    """The O(n·m·d) definition of S_C (for tests)."""
    return float((normalize(ref) @ normalize(gen).T).mean())


def squared_centroid_distance(ref: np.ndarray, gen: np.ndarray) -> float:
    """SCD = ‖z̄1 − z̄2‖² on normalised features (§5.2); lower is better."""
    d = centroid(ref) - centroid(gen)
    return float(d @ d)


def set_variance(z: np.ndarray) -> float:
    """V = (1/n) Σ‖ẑ_i − z̄‖² = 1 − ‖z̄‖² for unit rows (§5.3)."""
    zn = normalize(z)
    c = zn.mean(axis=0)
    return float(((zn - c) ** 2).sum(axis=1).mean())


def vendi_score(z: np.ndarray) -> float:
    """Vendi score with a linear kernel on normalised features, q = 1 (§5.5): exp of the entropy of the
    eigenvalues of K/n.  In [1, n]; the smaller Gram matrix (n×n or d×d) is decomposed."""
    x = normalize(z)
    n, d = x.shape
    if n == 0:
        return float("nan")
    k = (x.T @ x) / n if n > d else (x @ x.T) / n
    lam = np.linalg.eigvalsh(k)
    lam = lam[lam > 0]
    return float(math.exp(-float(np.sum(lam * np.log(lam)))))


def vendi_per_group(z: np.ndarray, groups: np.ndarray) -> float:
    """Mean Vendi score over the groups (e.g. the images of each ``<alter>`` prompt), groups in first-seen order."""
    x = as_matrix(z)
    g = np.asarray(groups)
    order = list(dict.fromkeys(g.tolist()))
    return float(np.mean([vendi_score(x[g == k]) for k in order]))


def paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over i of cos(a_i, b_i): text–image similarity (§5.4) and seed-matched image similarity."""
    x, y = normalize(a), normalize(b)
    if x.shape != y.shape:
        raise ValueError(f"paired features must have the same shape, got {x.shape} and {y.shape}")
    return float(np.mean(np.sum(x * y, axis=1)))


def gram_dims(channels: tuple[int, ...] | list[int]) -> int:
    """Length of g(x), the concatenated Gram matrices, for tap widths ``channels`` (610,304 for VGG-19)."""
    return int(sum(c * c for c in channels))


def style_loss(gen: np.ndarray, base: np.ndarray) -> float:
    """Mean over matched pairs of L_style = ‖g(x) − g(x′)‖² (§5.6); lower is better."""
    a, b = as_matrix(gen), as_matrix(base)
    if a.shape != b.shape:
        raise ValueError(f"style loss pairs images by seed: got {a.shape[0]} and {b.shape[0]} Gram vectors")
    return float(np.mean(np.sum((a - b) ** 2, axis=1)))


def style_similarity(ref: np.ndarray, gen: np.ndarray) -> float:
    """All-pairs mean squared distance between Gram vectors (§5.7): ‖ḡ1 − ḡ2‖² + V1 + V2, unnormalised; lower
    is better."""
    a, b = as_matrix(ref), as_matrix(gen)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va = float(((a - ma) ** 2).sum(axis=1).mean())
    vb = float(((b - mb) ** 2).sum(axis=1).mean())
    d = ma - mb
    return float(d @ d) + va + vb


def _sqrt_trace_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^½) via the symmetric form Σ1^½ Σ2 Σ1^½ (no scipy)."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ s2 @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(ref: np.ndarray, gen: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets (FID's formula on any encoder)."""
    a, b = as_matrix(ref), as_matrix(gen)
    mu = a.mean(axis=0) - b.mean(axis=0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((a.shape[1],) * 2)
    s2 = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((b.shape[1],) * 2)
    return float(mu @ mu + np.trace(s1) + np.trace(s2) - 2 * _sqrt_trace_product(s1, s2))


def kernel_inception_distance(ref: np.ndarray, gen: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³ (KID's formula on any encoder)."""
    a, b = as_matrix(ref), as_matrix(gen)
    d = a.shape[1]
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        return float("nan")
    kxx = (a @ a.T / d + 1) ** degree
    kyy = (b @ b.T / d + 1) ** degree
    kxy = (a @ b.T / d + 1) ** degree
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())
