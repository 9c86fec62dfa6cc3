"""LLaVA-NeXT's AnyRes image layout as index maps: pure functions of an image's size and the model config.

An AnyRes image reaches the vision tower as **views** of side × side patches: the whole image resized (the
base view), then rows × cols crops of the image resized to the best grid resolution (transformers'
``select_best_resolution`` over ``image_grid_pinpoints``), row by row. Two layouts put their tokens in the
LLM's sequence:

- the **packed span** (transformers' ``LlavaNextModel.pack_image_features``, the original code's
  ``spatial_unpad``): the base view's patches in raster order, then the crops stitched into one
  (rows·side) × (cols·side) grid, cut to the image's aspect ratio (``unpad_image`` drops the rows or
  columns that are padding), each of its rows followed by one ``image_newline`` token;
- the **spatial span** (the ``spatial`` merge type, which CDPruner's, VisPruner's and VisionZip's official
  LLaVA-NeXT code use): the base view in raster order, then the stitched crop grid in raster order; no
  unpadding, no newline tokens (the "2 880 tokens" of five 576-token views).

A token is named by its **view-patch index** ``view·side² + patch``. :func:`layout_for` gives an image's
:class:`AnyResLayout`, whose tables map between the three: ``packed`` (the view-patch of each packed slot, −1
for a newline), ``packed_slot`` (each view-patch's packed slot, −1 where unpadding cut it) and
``spatial_slot`` (each view-patch's slot in the spatial span). The cut is transformers' own ``unpad_image``
applied to a grid of indices, so the packed layout is the model's by construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnyResLayout:
    """One image's views and where each of their patches goes (see the module docstring)."""

    side: int                        # patches per view side (LLaVA-NeXT: 336 / 14 = 24)
    rows: int                        # the crop grid: rows × cols crops
    cols: int
    image_size: tuple[int, int]      # (height, width) of the original image: a row of the processor's image_sizes

    @property
    def views(self) -> int:
        return 1 + self.rows * self.cols

    @property
    def length(self) -> int:
        """Tokens of the packed span (base, unpadded crop grid, newlines): the image tokens in the prompt."""
        return int(self.packed.numel())

    @functools.cached_property
    def packed(self) -> Tensor:
        """[length] long: the view-patch index of each packed slot, −1 for a newline token."""
        from transformers.models.llava_next.modeling_llava_next import unpad_image

        s, base = self.side, torch.arange(self.side ** 2)
        if self.rows * self.cols == 0:                 # a single view: its patches, then one newline
            return torch.cat([base, torch.tensor([-1])])
        grid = torch.arange(self.rows * self.cols * s * s).view(self.rows, self.cols, s, s, 1)
        grid = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)        # [1, rows·s, cols·s], as the model
        grid = unpad_image(grid, list(self.image_size)) + s * s                  # crop patches follow the base view
        newline = torch.full((1, grid.shape[1], 1), -1)
        return torch.cat([base, torch.cat([grid, newline], -1).flatten(1, 2)[0]])

    @functools.cached_property
    def packed_slot(self) -> Tensor:
        """[views·side²] long: each view-patch's packed slot, −1 where unpadding cut it."""
        out = torch.full((self.views * self.side ** 2 + 1,), -1)
        out[self.packed] = torch.arange(self.length)          # newlines land in the spare last cell
        return out[:-1]

    @functools.cached_property
    def spatial_slot(self) -> Tensor:
        """[views·side²] long: each view-patch's slot in the spatial span (base raster, then stitched raster)."""
        s = self.side
        patch = torch.arange(s * s)
        y, x = patch // s, patch % s
        crop = torch.arange(self.rows * self.cols)[:, None]
        r, q = crop // self.cols, crop % self.cols
        stitched = (r * s + y) * (self.cols * s) + q * s + x                    # [crops, s²]
        return torch.cat([patch, s * s + stitched.flatten()])


@functools.lru_cache(maxsize=512)
def anyres_layout(side: int, rows: int, cols: int, image_size: tuple[int, int]) -> AnyResLayout:
    """The layout (cached: its tables are built once per shape)."""
    return AnyResLayout(side, rows, cols, image_size)


def layout_for(config, image_size) -> AnyResLayout:
    """The AnyRes layout of an image of ``image_size`` (height, width) under a ``LlavaNextConfig``."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
    )

    vision = config.vision_config
    size = tuple(int(v) for v in image_size)
    rows, cols = get_anyres_image_grid_shape(list(size), config.image_grid_pinpoints, vision.image_size)
    views = image_size_to_num_patches(list(size), config.image_grid_pinpoints, vision.image_size)
    if views != 1 + rows * cols:        # pinpoints that are not multiples of the view size: the model itself fails
        raise NotImplementedError(f"image size {size}: {views} views for a {rows}×{cols} crop grid; "
                                  "image_grid_pinpoints must be multiples of the vision image_size")
    return anyres_layout(vision.image_size // vision.patch_size, rows, cols, size)


__all__ = ["AnyResLayout", "anyres_layout", "layout_for"]
