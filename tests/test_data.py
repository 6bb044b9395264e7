"""Tests of mergenas.data: data root, CIFAR-10 loading and checks, search split, batches."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mergenas import data
from mergenas.data import (
    CIFAR10_CLASSES,
    BatchStream,
    DataError,
    MissingDataError,
    augment_batch,
    load_cifar10,
    normalize_batch,
    resolve_data_root,
    split_search_halves,
    to_tensor_images,
)

# The full reference data: MERGENAS_DATA if set, else the shared data folder beside the checkout.
REFERENCE_DATA = Path(
    os.environ.get("MERGENAS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
).expanduser()
needs_cifar10 = pytest.mark.skipif(
    not (REFERENCE_DATA / "cifar10" / "cifar10.npz").is_file(),
    reason=f"CIFAR-10 archive not found under {REFERENCE_DATA}; set MERGENAS_DATA",
)


def write_fake_npz(path: Path, num_train: int = 6, num_test: int = 4, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, num_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, num_test).astype(np.uint8),
        "classes": np.array(CIFAR10_CLASSES),
    }
    arrays.update(overrides)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# --- data root -------------------------------------------------------------------------------


def test_data_root_argument_beats_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGENAS_DATA", str(tmp_path / "from_env"))
    assert resolve_data_root(tmp_path / "from_arg") == (tmp_path / "from_arg").resolve()
    assert resolve_data_root() == (tmp_path / "from_env").resolve()


def test_data_root_default_is_project_data(monkeypatch):
    monkeypatch.delenv("MERGENAS_DATA", raising=False)
    project_root = Path(data.__file__).resolve().parent.parent
    assert resolve_data_root() == project_root / "data"
    monkeypatch.setenv("MERGENAS_DATA", "")
    assert resolve_data_root() == project_root / "data"


def test_data_root_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_root("~/cifar") == (tmp_path / "cifar").resolve()
    assert resolve_data_root().is_absolute()


# --- loading CIFAR-10 ------------------------------------------------------------------------


@needs_cifar10
def test_load_reference_cifar10_shapes():
    cifar = load_cifar10(REFERENCE_DATA)
    assert cifar.x_train.shape == (50000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8
    assert cifar.y_train.shape == (50000,)
    assert cifar.y_train.dtype == np.int64
    assert cifar.x_test.shape == (10000, 32, 32, 3)
    assert cifar.y_test.shape == (10000,)
    assert cifar.y_test.dtype == np.int64
    assert set(np.unique(cifar.y_train)) == set(range(10))
    assert cifar.classes == CIFAR10_CLASSES
    assert cifar.source == (REFERENCE_DATA / "cifar10" / "cifar10.npz").resolve()


@needs_cifar10
def test_load_reference_cifar10_through_env(monkeypatch):
    monkeypatch.setenv("MERGENAS_DATA", str(REFERENCE_DATA))
    assert load_cifar10() is load_cifar10(REFERENCE_DATA)


def test_load_caches_per_path(tmp_path):
    write_fake_npz(tmp_path / "a" / "cifar10" / "cifar10.npz", num_train=6)
    write_fake_npz(tmp_path / "b" / "cifar10" / "cifar10.npz", num_train=8)
    first = load_cifar10(tmp_path / "a")
    assert load_cifar10(tmp_path / "a") is first
    other = load_cifar10(tmp_path / "b")
    assert other is not first
    assert len(other.x_train) == 8
    assert not first.x_train.flags.writeable


def test_load_small_fake_archive(tmp_path):
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", num_train=6, num_test=4)
    cifar = load_cifar10(tmp_path)
    assert cifar.x_train.shape == (6, 32, 32, 3)
    assert cifar.y_train.dtype == np.int64
    assert cifar.x_test.shape == (4, 32, 32, 3)


def test_missing_cifar10_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MERGENAS_DATA", raising=False)
    with pytest.raises(MissingDataError) as caught:
        load_cifar10(tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve() / "cifar10" / "cifar10.npz") in message
    assert str(tmp_path.resolve() / "cifar10" / "cifar-10-batches-py") in message
    assert "MERGENAS_DATA" in message
    assert "--data-root" in message
    assert "download" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_wrong_image_layout_names_key(tmp_path):
    nchw = np.zeros((6, 3, 32, 32), dtype=np.uint8)
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", x_train=nchw)
    with pytest.raises(DataError) as caught:
        load_cifar10(tmp_path)
    message = str(caught.value)
    assert "'x_train'" in message
    assert "(6, 3, 32, 32)" in message
    assert "(N, 32, 32, 3)" in message
    assert "cifar10.npz" in message


def test_wrong_image_dtype_names_key(tmp_path):
    floats = np.zeros((6, 32, 32, 3), dtype=np.float32)
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", x_train=floats)
    with pytest.raises(DataError, match="'x_train'.*float32"):
        load_cifar10(tmp_path)


def test_label_count_mismatch(tmp_path):
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", y_test=np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_cifar10(tmp_path)
    message = str(caught.value)
    assert "'y_test'" in message
    assert "(3,)" in message
    assert "(4,)" in message


def test_label_out_of_range(tmp_path):
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", y_train=np.full(6, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="'y_train'.*0..9"):
        load_cifar10(tmp_path)


def test_missing_key_named(tmp_path):
    write_fake_npz(tmp_path / "cifar10" / "cifar10.npz", y_train=None)
    with pytest.raises(DataError, match="lacks the keys y_train"):
        load_cifar10(tmp_path)


def test_truncated_archive_names_file(tmp_path):
    complete = write_fake_npz(tmp_path / "complete.npz")
    truncated = tmp_path / "cifar10" / "cifar10.npz"
    truncated.parent.mkdir()
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        load_cifar10(tmp_path)
    assert str(truncated.resolve()) in str(caught.value)
    assert not isinstance(caught.value, MissingDataError)


def test_not_an_archive_names_file(tmp_path):
    path = tmp_path / "cifar10" / "cifar10.npz"
    path.parent.mkdir()
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="cifar10.npz"):
        load_cifar10(tmp_path)


class FakeTorchvisionCifar10:
    """A stand-in for torchvision.datasets.CIFAR10 that records how it was called."""

    calls: list[dict] = []

    def __init__(self, root, train=True, download=False):
        type(self).calls.append({"root": root, "train": train, "download": download})
        count = 5 if train else 3
        self.data = np.full((count, 32, 32, 3), 7, dtype=np.uint8)
        self.targets = list(range(count))
        self.classes = list(CIFAR10_CLASSES)


def test_torchvision_fallback(monkeypatch, tmp_path):
    import torchvision

    FakeTorchvisionCifar10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeTorchvisionCifar10)
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    cifar = load_cifar10(tmp_path)
    assert cifar.x_train.shape == (5, 32, 32, 3)
    assert cifar.y_test.tolist() == [0, 1, 2]
    assert cifar.source == (tmp_path / "cifar10").resolve()
    root = str((tmp_path / "cifar10").resolve())
    assert FakeTorchvisionCifar10.calls == [
        {"root": root, "train": True, "download": False},
        {"root": root, "train": False, "download": False},
    ]


def test_download_passed_to_torchvision(monkeypatch, tmp_path):
    import torchvision

    FakeTorchvisionCifar10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeTorchvisionCifar10)
    load_cifar10(tmp_path, download=True)
    assert [call["download"] for call in FakeTorchvisionCifar10.calls] == [True, True]


def test_failed_download_raises_data_error(monkeypatch, tmp_path):
    import torchvision

    def offline(root, train=True, download=False):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading CIFAR-10 into .* failed"):
        load_cifar10(tmp_path, download=True)


def test_corrupt_torchvision_files(monkeypatch, tmp_path):
    import torchvision

    def corrupt(root, train=True, download=False):
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", corrupt)
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


# --- search split ----------------------------------------------------------------------------


def test_split_halves_disjoint_and_covering():
    train, valid = split_search_halves(50000, seed=3)
    assert len(train) == 25000
    assert len(valid) == 25000
    assert len(np.intersect1d(train, valid)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(50000))


def test_split_halves_deterministic_per_seed():
    first = split_search_halves(1000, seed=7)
    again = split_search_halves(1000, seed=7)
    other = split_search_halves(1000, seed=8)
    assert np.array_equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_split_halves_odd_count():
    train, valid = split_search_halves(11, seed=0)
    assert (len(train), len(valid)) == (5, 6)
    with pytest.raises(ValueError, match="at least 2"):
        split_search_halves(1, seed=0)


# --- tensors and augmentation ----------------------------------------------------------------


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)


def test_to_tensor_images_layout():
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    nchw = to_tensor_images(nhwc, "cpu")
    assert nchw.shape == (2, 3, 32, 32)
    assert nchw.dtype == torch.uint8
    assert nchw[1, 2, 5, 7].item() == nhwc[1, 5, 7, 2]
    with pytest.raises(ValueError, match="NHWC"):
        to_tensor_images(nhwc.transpose(0, 3, 1, 2))


def test_normalize_batch_values():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    normalized = normalize_batch(images)
    assert normalized.dtype == torch.float32
    expected = [(1.0 - mean) / std for mean, std in zip(data.CIFAR10_MEAN, data.CIFAR10_STD)]
    assert normalized[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-6)


@needs_cifar10
def test_normalized_train_images_zero_mean():
    cifar = load_cifar10(REFERENCE_DATA)
    normalized = normalize_batch(to_tensor_images(cifar.x_train[:5000]))
    channel_mean = normalized.mean(dim=(0, 2, 3))
    channel_std = normalized.std(dim=(0, 2, 3))
    assert channel_mean.abs().max().item() < 0.03
    assert (channel_std - 1).abs().max().item() < 0.03


def reference_augment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Crop and flip one image at a time, drawing the same random numbers as augment_batch."""
    generator = torch.Generator().manual_seed(seed)
    count = len(images)
    top = torch.randint(0, 9, (count,), generator=generator)
    left = torch.randint(0, 9, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    padded = F.pad(images, (4, 4, 4, 4))
    crops = []
    for i in range(count):
        crop = padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32]
        crops.append(crop.flip(-1) if flip[i] else crop)
    return normalize_batch(torch.stack(crops))


def test_augment_matches_per_image_crop():
    images = random_images(64)
    augmented = augment_batch(images, torch.Generator().manual_seed(5))
    assert augmented.shape == (64, 3, 32, 32)
    assert augmented.dtype == torch.float32
    assert torch.equal(augmented, reference_augment(images, seed=5))


def test_augment_pads_with_zero_pixels():
    images = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)
    augmented = augment_batch(images, torch.Generator().manual_seed(0))
    black = normalize_batch(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).flatten()
    white = normalize_batch(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    pixels = augmented.permute(0, 2, 3, 1).reshape(-1, 3)
    is_black = (pixels == black).all(dim=1)
    is_white = (pixels == white).all(dim=1)
    assert bool((is_black | is_white).all())
    assert is_black.any()
    # Offsets are uniform over 0..8, so a few crops fall exactly on the image (offset 4, 4).
    assert bool((augmented == white.view(1, 3, 1, 1)).all(dim=(1, 2, 3)).any())


def test_augment_reproducible_per_seed():
    images = random_images(32)
    first = augment_batch(images, torch.Generator().manual_seed(11))
    again = augment_batch(images, torch.Generator().manual_seed(11))
    other = augment_batch(images, torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augment_rejects_float_input():
    with pytest.raises(ValueError, match="uint8 NCHW"):
        augment_batch(torch.zeros(2, 3, 32, 32), torch.Generator())


# --- BatchStream -----------------------------------------------------------------------------


def make_stream(seed: int = 1, **options) -> BatchStream:
    images = random_images(100)
    labels = torch.arange(100, dtype=torch.int64)
    return BatchStream(images, labels, batch_size=16, seed=seed, **options)


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)


def test_stream_resume_equals_tail():
    stream = make_stream()
    full = list(stream.epoch(2))
    assert len(full) == stream.steps_per_epoch == 6
    for start in (0, 1, 4, 6):
        assert_same_batches(list(stream.epoch(2, start_step=start)), full[start:])
    assert_same_batches(list(make_stream().epoch(2, start_step=3)), full[3:])


def test_stream_epochs_and_seeds_differ():
    stream = make_stream()
    epoch_0 = list(stream.epoch(0))
    assert not torch.equal(epoch_0[0][1], list(stream.epoch(1))[0][1])
    assert not torch.equal(epoch_0[0][1], list(make_stream(seed=2).epoch(0))[0][1])
    assert_same_batches(list(stream.epoch(0)), epoch_0)


def test_stream_covers_each_image_once():
    stream = make_stream(drop_last=False, augment=False)
    batches = list(stream.epoch(0))
    assert stream.steps_per_epoch == 7
    assert [len(labels) for _, labels in batches] == [16] * 6 + [4]
    labels = torch.cat([labels for _, labels in batches])
    assert sorted(labels.tolist()) == list(range(100))
    first_images, first_labels = batches[0]
    assert torch.equal(first_images, normalize_batch(stream.images[first_labels]))


def test_stream_drop_last_steps():
    stream = make_stream()
    labels = torch.cat([labels for _, labels in stream.epoch(0)])
    assert len(labels) == 96
    assert len(set(labels.tolist())) == 96


def test_stream_rejects_bad_arguments():
    images = random_images(10)
    labels = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="exceeds the 10 images"):
        BatchStream(images, labels, batch_size=11, seed=0)
    with pytest.raises(ValueError, match="int64"):
        BatchStream(images, labels.int(), batch_size=2, seed=0)
    stream = BatchStream(images, labels, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="start_step 6"):
        stream.epoch(0, start_step=6)
    with pytest.raises(ValueError, match="epoch_index"):
        stream.epoch(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_cuda_matches_cpu():
    cpu_stream = make_stream()
    cuda_stream = BatchStream(
        cpu_stream.images.cuda(), cpu_stream.labels.cuda(), batch_size=16, seed=1
    )
    for (cpu_images, cpu_labels), (cuda_images, cuda_labels) in zip(
        cpu_stream.epoch(3), cuda_stream.epoch(3)
    ):
        assert cuda_images.device.type == "cuda"
        assert torch.equal(cuda_labels.cpu(), cpu_labels)
        assert torch.allclose(cuda_images.cpu(), cpu_images, atol=1e-6)


def test_download_flag_reaches_torchvision(tmp_path, monkeypatch):
    """`mergenas --download` lets torchvision fetch CIFAR-10 when no copy is under the root."""
    import torchvision

    from mergenas import cli

    requested = []

    def refuse_download(root, train, download):
        requested.append((root, train, download))
        raise OSError("no network in this test")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse_download)
    # setenv records the variable, so the value main() writes is undone after the test.
    monkeypatch.setenv("MERGENAS_DOWNLOAD", "0")
    status = cli.main(["--download", "search", "--preset", "ci", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    assert status == 2
    assert requested == [(str(tmp_path / "cifar10"), True, True)]
    assert not (tmp_path / "run").exists()


def test_missing_data_mentions_download(tmp_path, monkeypatch):
    monkeypatch.delenv("MERGENAS_DOWNLOAD", raising=False)
    with pytest.raises(MissingDataError) as error:
        load_cifar10(tmp_path)
    assert "--download" in str(error.value)
    assert str(tmp_path / "cifar10" / "cifar10.npz") in str(error.value)
