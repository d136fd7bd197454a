"""mmsegmentation's IoUMetric on a confusion matrix.

IoUMetric sums, over the dataset, per-class intersection, union, predicted and ground-truth areas
of each image at its ground truth's size with the ignore index excluded; IoU = intersect / union
(NaN for a class absent from both), Acc = intersect / label area, mIoU and mAcc the nanmean,
aAcc = sum(intersect) / sum(label). All of these are functions of the confusion matrix
(rows ground truth, columns prediction), which is what we keep per image and sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """int64 [K, K]: counts of (ground truth, prediction) over the pixels whose ground truth is not
    the ignore index. Predictions outside [0, K) are counted nowhere (IoUMetric's histc drops them)."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = (g != ignore_index) & (g >= 0) & (g < num_classes) & (p >= 0) & (p < num_classes)
    flat = np.bincount(g[keep] * num_classes + p[keep], minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    iou: np.ndarray  # [K] float64, NaN where the class is absent from ground truth and prediction
    acc: np.ndarray  # [K] float64, NaN where the class is absent from the ground truth
    miou: float
    macc: float
    aacc: float


def scores(cm: np.ndarray) -> Scores:
    """IoUMetric's per-class IoU, Acc, and mIoU / mAcc (nanmean) / aAcc, from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    label = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    union = label + pred - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
        aacc = float(inter.sum() / label.sum()) if label.sum() else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    macc = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    return Scores(iou, acc, miou, macc, aacc)


def agreement(a: np.ndarray, b: np.ndarray, gt: np.ndarray, ignore_index: int) -> tuple[int, int]:
    """(pixels where two label maps agree, pixels counted): ground truth's ignore pixels excluded."""
    valid = gt != ignore_index
    return int((a[valid] == b[valid]).sum()), int(valid.sum())
