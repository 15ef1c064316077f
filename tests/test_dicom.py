"""DICOM decoding: LUTs, MONOCHROME1, bit depths, compression, header facts, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from cxrdet.data.dicom import parse_age, read_dicom, read_dicom_header, to_uint8
from cxrdet.data.images import read_image, read_image_size
from cxrdet.errors import DicomReadError, ImageReadError

DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"


def gradient(height: int = 48, width: int = 40, top: int = 255) -> np.ndarray:
    """A smooth image with a bright square, values 0..top."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = (xx + 2 * yy) / (width - 1 + 2 * (height - 1)) * 0.7
    image[10:20, 12:24] = 1.0
    return np.round(image * top).astype(np.int64)


def write_dicom(
    path: Path, pixels: np.ndarray, bits: int = 8, photometric: str = "MONOCHROME2", **tags
) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DIGITAL_XRAY
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def compressed_copy(source: Path, target: Path, syntax) -> Path:
    import pydicom

    ds = pydicom.dcmread(source)
    ds.compress(syntax, encoding_plugin="pylibjpeg")
    ds.save_as(target)
    return target


def test_8bit_monochrome2_reads_as_stored(tmp_path):
    pixels = gradient()
    image = read_dicom(write_dicom(tmp_path / "a.dcm", pixels))
    assert image.dtype == np.float32 and image.shape == pixels.shape
    np.testing.assert_array_equal(image, pixels)


def test_12bit_monochrome1_with_rescale_equals_its_monochrome2_twin(tmp_path):
    pixels = gradient(top=4095)
    rescale = {"RescaleSlope": "2", "RescaleIntercept": "-1024"}
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, 12, **rescale))
    mono1 = read_dicom(
        write_dicom(tmp_path / "m1.dcm", 4095 - pixels, 12, "MONOCHROME1", **rescale)
    )
    np.testing.assert_allclose(mono2, pixels * 2.0 - 1024)
    np.testing.assert_allclose(mono1, mono2)
    assert mono1[15, 15] > mono1[0, 0]  # the bright square stays bright


def test_16bit_window_clips_and_scales(tmp_path):
    pixels = gradient(top=65535)
    path = write_dicom(tmp_path / "w.dcm", pixels, 16, WindowCenter="20000", WindowWidth="20000")
    image = read_dicom(path)
    assert image[15, 15] == pytest.approx(65535)  # above the window: top of the output range
    assert image[0, 0] == pytest.approx(0)  # below the window: bottom
    inside = (pixels > 11000) & (pixels < 29000)
    assert np.all(np.diff(image[inside][np.argsort(pixels[inside])]) >= 0)  # monotonic inside
    assert len(np.unique(image[inside])) > 10


def test_voi_lut_sequence_is_applied_and_monochrome1_inverted_within_its_range(tmp_path):
    pixels = gradient(top=4095)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(4096) // 16).tolist()  # 12 bits -> 0..255
    item["LUTData"].VR = "US"
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, 12, VOILUTSequence=[item]))
    mono1_path = write_dicom(
        tmp_path / "m1.dcm", 4095 - pixels, 12, "MONOCHROME1", VOILUTSequence=[item]
    )
    np.testing.assert_array_equal(mono2, pixels // 16)
    np.testing.assert_array_equal(read_dicom(mono1_path), 255 - (4095 - pixels) // 16)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_to_uint8_matches_across_bit_depths(tmp_path, bits):
    base = gradient(top=255)
    pixels = base * ((2**bits - 1) // 255)
    image = to_uint8(read_dicom(write_dicom(tmp_path / "b.dcm", pixels, bits)), 0, 100)
    np.testing.assert_array_equal(image, to_uint8(base.astype(np.float32), 0, 100))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
@pytest.mark.parametrize("bits", [8, 12])
def test_compressed_equals_uncompressed(tmp_path, syntax, bits):
    pixels = gradient(top=2**bits - 1)
    plain = write_dicom(tmp_path / "plain.dcm", pixels, bits, "MONOCHROME1")
    packed = compressed_copy(plain, tmp_path / "packed.dcm", syntax)
    assert packed.read_bytes() != plain.read_bytes()
    np.testing.assert_array_equal(read_dicom(packed), read_dicom(plain))
    assert read_dicom_header(packed).rows == pixels.shape[0]


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]
)
def test_shipped_compressed_files_match_their_uncompressed_original(name):
    """pydicom's own test files: JPEG-LS (no encoder here to write one), signed 16-bit, windowed."""
    from pydicom.data import get_testdata_file

    original = read_dicom(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_dicom(get_testdata_file(name)), original)


def test_header_facts(tmp_path):
    path = write_dicom(
        tmp_path / "h.dcm",
        gradient(),
        PatientSex="F",
        PatientAge="047Y",
        ViewPosition="AP",
        PatientID="p-9",
    )
    header = read_dicom_header(path)
    assert (header.rows, header.columns) == (48, 40)
    assert (header.sex, header.age, header.view, header.patient_id) == ("F", 47, "AP", "p-9")
    assert (header.photometric, header.bits_stored) == ("MONOCHROME2", 8)
    assert read_image_size(path) == (40, 48)


@pytest.mark.parametrize(
    "text, years",
    [
        ("47", 47),
        ("047Y", 47),
        (" 58 ", 58),
        ("006M", 0),
        ("030M", 2),
        ("010D", 0),
        ("104W", 2),
        ("", None),
        (None, None),
        ("abc", None),
        ("47.5", None),
    ],
)
def test_parse_age(text, years):
    assert parse_age(text) == years


def test_missing_tags_are_none(tmp_path):
    header = read_dicom_header(write_dicom(tmp_path / "bare.dcm", gradient()))
    assert (header.sex, header.age, header.view, header.patient_id) == (None, None, None, None)


def test_to_uint8_percentile_clip_and_constant():
    values = np.arange(1000, dtype=np.float32).reshape(25, 40)
    scaled = to_uint8(values, 10, 90)
    assert scaled.dtype == np.uint8
    assert scaled.min() == 0 and scaled.max() == 255
    assert (scaled == 0).sum() >= 100 and (scaled == 255).sum() >= 100
    np.testing.assert_array_equal(to_uint8(np.full((5, 5), 7.0)), np.zeros((5, 5), np.uint8))
    spike = np.zeros((20, 20), np.float32)
    spike[0, 0] = 5  # flat percentiles: fall back to min..max rather than a black image
    assert to_uint8(spike)[0, 0] == 255
    with pytest.raises(ValueError):
        to_uint8(values, 60, 40)


# ----------------------------------------------------------------------- bad files


def good_file(tmp_path: Path) -> Path:
    return write_dicom(tmp_path / "good.dcm", gradient())


def not_dicom(tmp_path: Path) -> Path:
    path = tmp_path / "text.dcm"
    path.write_text("hello, this is not a DICOM file\n" * 10)
    return path


def truncated_pixels(tmp_path: Path) -> Path:
    path = good_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def truncated_header(tmp_path: Path) -> Path:
    path = good_file(tmp_path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    return path


def no_pixel_data(tmp_path: Path) -> Path:
    import pydicom

    path = good_file(tmp_path)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def multi_frame(tmp_path: Path) -> Path:
    frames = np.stack([gradient(), gradient()[::-1]])
    path = write_dicom(
        tmp_path / "multi.dcm", frames.reshape(-1, frames.shape[2]), NumberOfFrames=2
    )
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = frames.shape[1]
    ds.save_as(path)
    return path


BAD_FILES = {
    "not DICOM": (not_dicom, "not a DICOM file"),
    "truncated pixel data": (truncated_pixels, "truncated"),
    "truncated header": (truncated_header, "Rows"),
    "empty": (empty, "empty file"),
    "no pixel data": (no_pixel_data, "no pixel data"),
    "multi-frame": (multi_frame, "multi-frame"),
}


@pytest.mark.parametrize("make, reason", BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("reader", [read_dicom, read_dicom_header, read_image, read_image_size])
def test_bad_files_raise_dicom_read_error_naming_the_file(tmp_path, make, reason, reader):
    path = make(tmp_path)
    with pytest.raises(DicomReadError, match=reason) as caught:
        reader(path)
    assert caught.value.path == path and str(path) in str(caught.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A small RLE file declaring 16000 x 16000 pixels (4 GB decoded as 16-bit) is refused from
    its header by every reader, and so is a PNG over the same limit, without decoding."""
    import pydicom

    from cxrdet.data.dicom import MAX_PIXELS

    source = compressed_copy(
        write_dicom(tmp_path / "small.dcm", gradient(), bits=12),
        tmp_path / "rle.dcm",
        RLELossless,
    )
    ds = pydicom.dcmread(source)
    ds.Rows = ds.Columns = 16000
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb)
    assert bomb.stat().st_size < 100_000
    for reader in (read_dicom, read_dicom_header, read_image, read_image_size):
        with pytest.raises(
            DicomReadError, match=r"16000 x 16000 pixels \(256 MP\), over the 50 MP"
        ):
            reader(bomb)
    side = int(MAX_PIXELS**0.5) + 1
    large = tmp_path / "large.png"
    Image.new("L", (side, side)).save(large, optimize=False)
    for reader in (read_image, read_image_size):
        with pytest.raises(ImageReadError, match="over the 50 MP limit"):
            reader(large)


def test_missing_file(tmp_path):
    with pytest.raises(DicomReadError, match="file not found"):
        read_dicom(tmp_path / "absent.dcm")


# ------------------------------------------------------------------ images.py


def test_read_image_dicom_is_uint8(tmp_path):
    image = read_image(write_dicom(tmp_path / "a.dcm", gradient(top=4095), 12))
    assert image.dtype == np.uint8 and image.shape == (48, 40) and image.max() == 255


def test_read_png_jpeg_and_16bit_png(tmp_path):
    pixels = gradient().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(tmp_path / "rgb.jpg", quality=95)
    deep = (gradient(top=4095)).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(deep).save(tmp_path / "deep.png")

    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)
    jpeg = read_image(tmp_path / "rgb.jpg")
    assert jpeg.shape == pixels.shape and np.abs(jpeg.astype(int) - pixels).max() <= 8
    stretched = read_image(tmp_path / "deep.png", 0, 100)
    assert stretched.dtype == np.uint8 and stretched.max() == 255
    np.testing.assert_array_equal(stretched, to_uint8(deep.astype(np.float32), 0, 100))
    assert read_image_size(tmp_path / "rgb.jpg") == (40, 48)


def test_unreadable_raster_and_unknown_suffix(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image_size(tmp_path / "bad.png")
    good = tmp_path / "good.png"
    Image.fromarray(gradient().astype(np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:80])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(cut)
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "x.bmp")
    with pytest.raises(ImageReadError, match="file not found"):
        read_image_size(tmp_path / "absent.png")
