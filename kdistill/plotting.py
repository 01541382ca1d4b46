"""Image grids of distilled sets (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdistill.errors import DataError


def save_image_grid(
    images: np.ndarray,
    class_ids: np.ndarray,
    path: str | Path,
    class_names: list[str] | None = None,
    max_per_class: int = 10,
    title: str | None = None,
) -> Path:
    """Write a PNG grid: one row per class, up to ``max_per_class`` images per row.

    Args:
        images: ``[n, H, W, C]`` in raw pixel scale (0-255; apply the artifact's
            ``transform.inverse`` first); values are clipped for display.
        class_ids: ``[n]`` int class of each image.
        path: output ``.png`` path (parent directories are created).
        class_names: row labels, indexed by class id (drawn literally: ``$`` is not
            TeX math); default: the class ids.
    Returns:
        The path written.
    Raises:
        DataError: ``images`` not ``[n, H, W, C]`` with C of 1, 3 or 4, ``class_ids``
            not ``n`` non-negative integers, or an id without a name in ``class_names``.
    """
    images = np.asarray(images)
    class_ids = np.asarray(class_ids)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or len(images) == 0:
        raise DataError(f"image grid: expected images [n >= 1, H, W, C] with C in 1, 3, 4, got {images.shape}")
    if class_ids.shape != (len(images),) or class_ids.dtype.kind not in "iu":
        raise DataError(f"image grid: expected {len(images)} integer class ids, "
                        f"got {class_ids.dtype} {class_ids.shape}")
    if class_ids.min() < 0 or (class_names and class_ids.max() >= len(class_names)):
        bad = int(class_ids.min()) if class_ids.min() < 0 else int(class_ids.max())
        known = f"0..{len(class_names) - 1} ({len(class_names)} class names)" if class_names else "ids >= 0"
        raise DataError(f"image grid: class id {bad} is out of range: expected {known}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = np.unique(class_ids)
    cols = min(max_per_class, max(int(np.sum(class_ids == c)) for c in classes))
    fig, axes = plt.subplots(
        len(classes), cols, figsize=(1.1 * cols + 1.0, 1.1 * len(classes)), squeeze=False
    )
    pix = np.clip(np.asarray(images, np.float64) / 255.0, 0.0, 1.0)
    for r, c in enumerate(classes):
        members = np.flatnonzero(class_ids == c)[:cols]
        for j in range(cols):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(members):
                img = pix[members[j]]
                if img.shape[-1] == 1:
                    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img)
        name = str(class_names[int(c)]) if class_names else str(int(c))
        # parse_math=False: a name such as "$5 bill" is text, not TeX (mathtext would fail)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8, parse_math=False)
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
