"""Image-quality and prediction metrics for the report: MSE, SSIM, Laplacian sharpness, Fréchet distance,
linear-SVM attribute accuracy and the majority-class baseline, and the t-SNE grid assignment."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of images in [0, 1]."""
    return F.mse_loss(x.float(), y.float()).item()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of [0, 1] RGB batches."""
    w = _gaussian_window().to(x)
    c1, c2 = 0.01**2, 0.03**2
    blur = lambda t: F.conv2d(t, w, groups=3)  # noqa: E731 - valid window positions only
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the Laplacian of the grey image (a sharpness measure): (N,)."""
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).to(x).view(1, 1, 3, 3)
    return F.conv2d(grey, k).flatten(1).var(dim=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise slightly
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _fit_one(tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, vy: np.ndarray, c: float) -> float:
    from sklearn.svm import LinearSVC

    if len(np.unique(ty)) < 2:  # one class only: predict it
        return float((vy == ty[0]).mean())
    clf = LinearSVC(C=c, dual=False, max_iter=2000).fit(tx, ty)
    return float((clf.predict(vx) == vy).mean())


def svm_attribute_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                           c: float = 1.0, progress=None, n_jobs: int = -1) -> np.ndarray:
    """One linear SVM per attribute column (features standardised on the training set): test accuracies (A,).

    liblinear's primal solver (``LinearSVC(dual=False)``, suited to many more samples than features), one
    attribute per joblib worker (``n_jobs``, -1: all cores). ``progress``: an optional tqdm bar, updated per
    attribute and closed at the end."""
    from joblib import Parallel, delayed
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    tx, vx = scaler.transform(train_x), scaler.transform(test_x)
    jobs = (delayed(_fit_one)(tx, train_y[:, a], vx, test_y[:, a], c) for a in range(train_y.shape[1]))
    acc = []
    for value in Parallel(n_jobs=n_jobs, return_as="generator")(jobs):
        acc.append(value)
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    return np.array(acc)


def majority_accuracy(train_y: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """Accuracy of always predicting each attribute's majority class of the training set: (A,)."""
    majority = train_y.mean(0) >= 0.5
    return (test_y == majority[None, :]).mean(0)


def grid_assignment(points: np.ndarray, side: int) -> np.ndarray:
    """Assign side*side 2-D points to the cells of a side x side grid (linear_sum_assignment on squared
    distances after scaling the points to the unit square): cell index of each point, a permutation."""
    from scipy.optimize import linear_sum_assignment

    if len(points) != side * side:
        raise ValueError(f"need exactly {side * side} points for a {side}x{side} grid, got {len(points)}")
    p = points - points.min(0)
    p = p / np.maximum(p.max(0), 1e-12)
    gx, gy = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side))
    cells = np.stack([gx.ravel(), gy.ravel()], axis=1)
    cost = ((p[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(points), dtype=np.int64)
    out[rows] = cols
    return out
