"""From small maps to the photo's pixels: bilinear upsampling (pixel centres aligned), normalisation
to [0, 1] without a pass over the big map, and boxes cut band by band, at working size and scaled
to the photo."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .boxes import Box, mask_boxes, scale_box

BAND_PIXELS = 1 << 21  # upsampled maps are made in bands of 8 MB of float32, which stay in the last-level cache


def upsample_map(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample an (h, w) map to `size` (H, W), float32, pixel centres aligned (the
    geometry of torch's align_corners=False and cv2's INTER_LINEAR).

    Each row of the map is upsampled to the width W first (map @ cols.T, h x W); then each run of
    output rows between the same two of those rows is one product and one sum (`_band`), in bands
    of rows (`_bands`): on one thread 0.19 ms for 1 MP, against 0.37 ms for the product with the
    full (H, h) weight matrix, whose weights are mostly zeros (docs/experiments.md). The result goes
    into a numpy array: for 12 MP maps numpy's allocator made it 3x faster than a fresh torch tensor.
    """
    interpolators = _interpolators(small, size)
    out = np.empty(size, np.float32)
    target = torch.from_numpy(out)
    for start, stop in _bands(*size):
        _band(interpolators, start, stop, target[start:stop])
    return out


def boxes_of_maps(smalls, size: tuple[int, int], threshold: float, all_regions: bool = False) -> list[list[Box]]:
    """For each (h, w) map, `boxes_from_map(upsample_map(small, size), threshold, all_regions)`, bit
    for bit, without keeping the upsampled maps (most callers never read them): each is made a band
    at a time in buffers that all the maps share, and each band is thresholded while it is still in
    cache, so only a 1-byte mask reaches memory (README, "Speed").

    The cut needs a map's exact maximum first: it is read from the few blocks that can hold it
    (`_peak_blocks`), in bands that are made first and kept for the thresholding pass.
    """
    bands = _bands(*size)
    mask = np.empty(size, bool)
    buffers: list[torch.Tensor] = []  # band-sized, shared by the maps

    def buffer(slot: int) -> torch.Tensor:
        if slot == len(buffers):
            buffers.append(torch.empty((bands[0][1], size[1])))
        return buffers[slot]

    boxes = []
    for small, (top_rows, top_cols) in zip(smalls, _peak_blocks(smalls, size)):
        interpolators = _interpolators(small, size)
        kept, peak = {}, -np.inf
        for start, stop in bands:
            if start < top_rows.stop and top_rows.start < stop:
                kept[start] = _band(interpolators, start, stop, buffer(len(kept)))
                near = slice(max(top_rows.start - start, 0), top_rows.stop - start)
                peak = max(peak, float(kept[start][near, top_cols].max()))
        if peak <= 0:  # as boxes_from_map: no location (a normalised flat map is all zeros)
            boxes.append([])
            continue
        cutoff = np.float32(threshold * peak)
        for start, stop in bands:
            values = kept[start] if start in kept else _band(interpolators, start, stop, buffer(len(kept)))
            np.greater_equal(values, cutoff, out=mask[start:stop])
        boxes.append(mask_boxes(mask, all_regions))
    return boxes


def photo_boxes(smalls, working: tuple[int, int], size: tuple[int, int], threshold: float,
                all_regions: bool = False) -> list[list[Box]]:
    """`boxes_of_maps` cut at the `working` (h, w) resolution and scaled to the photo's own `size`
    (H, W): a 12 MP photo's boxes cost what a 1 MP photo's do, within a working pixel of the boxes
    cut at full size."""
    boxes = boxes_of_maps(smalls, working, threshold, all_regions)
    if tuple(working) == tuple(size):
        return boxes
    return [[scale_box(b, working, size) for b in found] for found in boxes]


def normalise_for_size(small: np.ndarray, size: tuple[int, int], margin: float = 1e-6) -> np.ndarray:
    """Rescale (..., h, w) maps so that each one's upsampling to `size` spans [0, 1]: min-max
    normalisation after upsampling, as the paper and wsolevaluation do, without a pass over the big map.

    The pixel grid rarely hits a small map's own extremes (at 227 px from 9x9 the upsampled peak
    can be 2% lower), but a bilinear map is linear along each row and column between samples, so
    its extremes lie on the pixels next to the samples; they are evaluated there. `margin` keeps
    float rounding inside [0, 1]. A flat map becomes all zeros.
    """
    small = np.asarray(small, dtype=np.float64)
    _, _, values = _values_next_to_samples(small, size)
    low, high = values.min((-2, -1), keepdims=True), values.max((-2, -1), keepdims=True)
    span = high - low
    flat = ~(span > 1e-9 * np.maximum(1.0, np.abs(high)))
    scaled = (small - low) * ((1 - 2 * margin) / np.where(flat, 1.0, span)) + margin
    return np.where(flat, 0.0, scaled).astype(np.float32)


@functools.lru_cache(maxsize=16)  # the last few photo sizes: a photo's maps share them
def _interpolation_weights(n_out: int, n_in: int) -> np.ndarray:
    """The (n_out, n_in) weights of a bilinear upsampling from n_in samples to n_out pixels along one
    axis: pixel centres aligned, the edges held constant (as `upsample_map`)."""
    position = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(0, n_in - 1)
    left = np.minimum(np.floor(position).astype(int), max(n_in - 2, 0))
    weight = position - left
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), left] = 1 - weight
    if n_in > 1:
        matrix[np.arange(n_out), left + 1] += weight
    matrix.flags.writeable = False  # shared by every call through the cache
    return matrix


@functools.lru_cache(maxsize=64)
def _sample_grid(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of an upsampling from n_in samples to n_out pixels: the output indices on either
    side of every sample and at both ends (one pixel of slack), and their rows of the interpolation
    weights, a (len(indices), n_in) matrix."""
    source = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(-1, n_in - 1)
    edges = np.flatnonzero(np.diff(source))
    at = np.unique(np.concatenate([[0, n_out - 1], edges - 1, edges, edges + 1, edges + 2]).clip(0, n_out - 1))
    matrix = _interpolation_weights(n_out, n_in)[at]
    at.flags.writeable = matrix.flags.writeable = False  # shared by every call through the cache
    return at, matrix


def _values_next_to_samples(smalls: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., h, w) float64 maps upsampled to `size`, evaluated only on the pixels next to their
    samples (`_sample_grid`): the row indices, the column indices and the values there."""
    (y, rows), (x, cols) = (_sample_grid(n_out, n_in) for n_out, n_in in zip(size, smalls.shape[-2:]))
    return y, x, rows @ smalls @ cols.T


def _bands(height: int, width: int) -> list[tuple[int, int]]:
    """The row ranges [start, stop) an upsampling to (height, width) is made in (one below 2 MP):
    8 MB of float32 each, which stays in the last-level cache while `boxes_of_maps` thresholds it."""
    step = max(1, min(BAND_PIXELS // width, height))
    return [(start, min(start + step, height)) for start in range(0, height, step)]


def _interpolators(small: np.ndarray, size: tuple[int, int]):
    """What `_band` makes the upsampled map from: the runs of output rows and their weights
    (`_row_runs`), each row of the map upsampled to the width W (h, W), and the steps between
    consecutive ones (h, W; the last is zeros)."""
    runs = _row_runs(size[0], small.shape[0])
    with torch.inference_mode():
        across = torch.tensor(small, dtype=torch.float32) @ _float32_weights(size[1], small.shape[1]).T
        steps = torch.zeros_like(across)
        torch.sub(across[1:], across[:-1], out=steps[:-1])
    return runs, across, steps


@functools.lru_cache(maxsize=16)
def _float32_weights(n_out: int, n_in: int) -> torch.Tensor:
    """`_interpolation_weights` as a float32 tensor, converted once per photo size (only ever read)."""
    return torch.tensor(_interpolation_weights(n_out, n_in), dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _row_runs(n_out: int, n_in: int) -> tuple[tuple[tuple[int, int, int], ...], torch.Tensor]:
    """Along the rows of an upsampling from n_in to n_out: the runs [start, stop) of output rows that
    lie between the same two input rows, with the upper one's index, and each output row's weight
    of the lower one, (n_out, 1) float32 (the weights of `_interpolation_weights`)."""
    position = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(0, n_in - 1)
    upper = np.minimum(np.floor(position).astype(int), max(n_in - 2, 0))
    starts = np.flatnonzero(np.r_[True, np.diff(upper) != 0])
    runs = tuple(zip(starts.tolist(), np.r_[starts[1:], n_out].tolist(), upper[starts].tolist()))
    return runs, torch.tensor(position - upper, dtype=torch.float32)[:, None]


def _band(interpolators, start: int, stop: int, out: torch.Tensor) -> np.ndarray:
    """Rows [start, stop) of the upsampled map, written into the first rows of `out`: the one
    place a band is made, so `upsample_map` and `boxes_of_maps` get the same bits. Each row is
    ``upper + weight * step``, one product and one sum, each rounded once: the bits do not depend
    on how the rows are split into runs, bands or threads."""
    (runs, weights), across, steps = interpolators
    band = out[:stop - start]
    with torch.inference_mode():
        for first, last, upper in runs:
            first, last = max(first, start), min(last, stop)
            if first < last:
                rows = band[first - start:last - start]
                torch.mul(weights[first:last], steps[upper], out=rows)
                rows.add_(across[upper])
    return band.numpy()


def _peak_blocks(smalls, size: tuple[int, int]) -> list[tuple[slice, slice]]:
    """For each (h, w) map, the rows and columns of its upsampling to `size` that hold its maximum,
    from its values next to the samples alone: between those pixels the map is bilinear, so a
    block's pixels exceed its corners only by float rounding, and only blocks whose corners come
    within 1e-6 (of the map's scale) of the top can hold the maximum."""
    smalls = np.asarray(smalls, np.float64)
    y, x, corners = _values_next_to_samples(smalls, size)
    if len(y) < 2 or len(x) < 2:
        return [(slice(0, size[0]), slice(0, size[1]))] * len(smalls)
    block_max = np.maximum(np.maximum(corners[:, :-1, :-1], corners[:, 1:, :-1]),
                           np.maximum(corners[:, :-1, 1:], corners[:, 1:, 1:]))
    top = corners.max((1, 2)) - 1e-6 * np.maximum(1.0, np.abs(smalls).max((1, 2)))
    blocks = []
    for near in block_max >= top[:, None, None]:
        near_rows, near_cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
        blocks.append((slice(int(y[near_rows[0]]), int(y[near_rows[-1] + 1]) + 1),
                       slice(int(x[near_cols[0]]), int(x[near_cols[-1] + 1]) + 1)))
    return blocks
