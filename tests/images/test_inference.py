"""derain_tensor: the original test script's padding, tiling and clamping."""

import pytest
import torch
import torch.nn.functional as F
from golden_data import load
from helpers import make_generator, rel_err
from imaging import direct_derain, tiny_model

from drsformer_fast import load_checkpoint
from drsformer_fast.images.inference import InferenceError, derain_tensor, pad_to_multiple, tile_starts

pytestmark = pytest.mark.usefixtures("one_thread", "torch_path")


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def rand(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=make_generator(seed))


def original_tiled(model, img, tile, overlap):
    """The original test.py tiling written out (square tiles of min(tile, H, W) of the padded image)."""
    h0, w0 = img.shape[-2:]
    x = F.pad(img, (0, (8 - w0 % 8) % 8, 0, (8 - h0 % 8) % 8), "reflect")
    b, c, h, w = x.shape
    t = min(tile, h, w)

    def starts(size):
        out, s = [], 0
        while s < size - t:
            out.append(s)
            s += t - overlap
        return out + [size - t]

    total = torch.zeros_like(x)
    count = torch.zeros_like(x)
    with torch.no_grad():
        for i in starts(h):
            for j in starts(w):
                total[..., i:i + t, j:j + t] += model(x[..., i:i + t, j:j + t])
                count[..., i:i + t, j:j + t] += 1
    return torch.clamp(total / count, 0, 1)[..., :h0, :w0]


def test_pad_reflects_bottom_right_to_a_multiple_of_8():
    x = rand(1, 37, 29)
    p = pad_to_multiple(x)
    assert p.shape[-2:] == (40, 32)
    assert torch.equal(p, F.pad(x, (0, 3, 0, 3), "reflect"))
    assert torch.equal(p[..., 37, :29], x[..., 35, :])  # reflection about the last row
    assert pad_to_multiple(rand(1, 16, 24)).shape[-2:] == (16, 24)
    assert pad_to_multiple(rand(1, 5, 8)).shape[-2:] == (8, 8)


@pytest.mark.parametrize("h,w", [(4, 16), (16, 3), (1, 1)])
def test_images_too_small_to_reflect_pad_are_a_clear_error(model, h, w):
    with pytest.raises(InferenceError, match=rf"image of {h}x{w} pixels is too small"):
        derain_tensor(model, rand(1, h, w))


def test_tile_starts_follow_the_original():
    assert tile_starts(40, 16, 8) == [0, 8, 16, 24]
    assert tile_starts(48, 24, 4) == [0, 20, 24]
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(24, 32, 8) == [0]


@pytest.mark.parametrize("h,w", [(37, 29), (20, 44), (16, 24)])
def test_untiled_is_pad_run_crop_clamp(model, h, w):
    x = rand(2, h, w, seed=h)
    out = derain_tensor(model, x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, direct_derain(model, x))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("tile", [40, 48, 64])
def test_a_tile_covering_the_image_is_no_tiling(model, tile):
    x = rand(1, 37, 29, seed=1)  # padded to 40x32: non-square
    assert torch.equal(derain_tensor(model, x, tile=tile), derain_tensor(model, x))


@pytest.mark.parametrize("h,w,tile,overlap", [(37, 29, 16, 8), (20, 44, 16, 4), (40, 40, 24, 8), (24, 48, 24, 12)])
def test_overlapping_tiles_average_like_the_original(model, h, w, tile, overlap):
    x = rand(1, h, w, seed=2)
    out = derain_tensor(model, x, tile=tile, tile_overlap=overlap)
    ref = original_tiled(model, x, tile, overlap)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not torch.equal(out, derain_tensor(model, x))  # the tiles do change the result


def test_batches_are_per_image(model):
    x = rand(3, 21, 18, seed=3)
    out = derain_tensor(model, x, tile=16, tile_overlap=8)
    for i in range(3):
        # batched convolutions may sum in another order: fp32 roundings apart
        torch.testing.assert_close(out[i:i + 1], derain_tensor(model, x[i:i + 1], tile=16, tile_overlap=8),
                                   rtol=0, atol=1e-5)


def test_golden_model_in_float64():
    d = load("model_mefc_tiny")  # input 1x3x32x48: no padding
    model = load_checkpoint(d["checkpoint"], fast=False).double()
    out = derain_tensor(model, d["input"].double())
    assert out.dtype == torch.float64
    assert rel_err(out, d["output"].clamp(0, 1)) <= 1e-9


@pytest.mark.parametrize("tile,overlap,match", [(12, 4, "multiple of 8"), (0, 0, "multiple of 8"),
                                                (16, 16, "overlap .* smaller"), (16, -1, "non-negative")])
def test_bad_tiling_is_a_clear_error(model, tile, overlap, match):
    with pytest.raises(InferenceError, match=match):
        derain_tensor(model, rand(1, 16, 16), tile=tile, tile_overlap=overlap)


def test_precisions_on_cpu(model):
    x = rand(1, 16, 16)
    with pytest.raises(InferenceError, match="fp16 needs a CUDA device"):
        derain_tensor(model, x, precision="fp16")
    with pytest.raises(InferenceError, match="precision must be one of"):
        derain_tensor(model, x, precision="fp8")
    out = derain_tensor(model, x, precision="bf16")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, derain_tensor(model, x)) < 0.05


def test_input_must_be_a_batch(model):
    with pytest.raises(InferenceError, match=r"\[B, C, H, W\]"):
        derain_tensor(model, torch.rand(3, 16, 16))
