"""Image reading/writing and discovery for the command line."""

import numpy as np
import pytest
import torch
from PIL import Image

from drsformer_fast.images.imageio import ImageError, find_images, read_image, read_image_uint8, to_uint8, write_png


def test_modes_become_8_bit_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(read_image_uint8(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))

    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image_uint8(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped, like OpenCV

    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.array_equal(read_image_uint8(tmp_path / "deep.png")[..., 0], (deep >> 8).astype(np.uint8))


def test_read_is_uint8_over_255_and_write_round_trips(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.bmp")
    img = read_image(tmp_path / "a.bmp")
    assert img.shape == (3, 7, 9) and img.dtype == torch.float32
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0)
    write_png(tmp_path / "b.png", img)
    assert np.array_equal(read_image_uint8(tmp_path / "b.png"), arr)


def test_to_uint8_is_img_as_ubyte_of_the_clamped_image():
    x = torch.tensor([0.5, 1.5, 2.5, 254.5, -3.0, 300.0], dtype=torch.float64).reshape(3, 1, 2).div(255).float()
    got = to_uint8(x)[0].T.reshape(-1)
    expected = np.rint(np.clip(x.numpy(), 0, 1) * np.float32(255)).reshape(-1)  # skimage img_as_ubyte
    assert np.array_equal(got, expected.astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, 0] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert read_image_uint8(tmp_path / "rot.jpg").shape == (6, 4, 3)


def test_find_images(tmp_path):
    for name in ("10.png", "2.JPG", "1.jpeg", "x.Bmp", "notes.txt", "y.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "3.png").write_bytes(b"")
    assert [p.name for p in find_images([tmp_path])] == ["1.jpeg", "2.JPG", "10.png", "x.Bmp"]
    assert [p.name for p in find_images([tmp_path / "10.png", tmp_path / "sub"])] == ["10.png", "3.png"]
    with pytest.raises(ImageError, match="not a supported image type"):
        find_images([tmp_path / "y.gif"])
    with pytest.raises(ImageError, match="no such file or folder"):
        find_images([tmp_path / "absent.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images"):
        find_images([tmp_path / "empty"])


def test_unreadable_image(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")
