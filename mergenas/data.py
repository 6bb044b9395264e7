"""CIFAR-10 for search and final training: loading, the search split and device-side batches.

The whole data set fits on an accelerator (50,000 x 3 x 32 x 32 uint8 is 147 MiB), so the images
stay there as uint8. Each batch is augmented and normalised with tensor operations on that device,
without a DataLoader or worker processes.

Files live under a data root (see `resolve_data_root`): `<root>/cifar10/cifar10.npz`, or
torchvision's own CIFAR-10 files under `<root>/cifar10`.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "MERGENAS_DATA"
# Set to 1 to let torchvision download CIFAR-10 into the data root when no copy is there.
DOWNLOAD_ENV_VAR = "MERGENAS_DOWNLOAD"
DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent / "data"

CIFAR10_DIR = "cifar10"
CIFAR10_NPZ = "cifar10.npz"
# The folder that torchvision.datasets.CIFAR10 downloads into and reads from, below its `root`.
TORCHVISION_CIFAR10_DIR = "cifar-10-batches-py"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Channel mean and std of the 50,000 CIFAR-10 training images, pixel values scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CROP_PADDING = 4


class DataError(RuntimeError):
    """A data file that exists but cannot be read or has the wrong content."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file that is not where it was looked for."""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the absolute data root folder.

    Precedence: the `data_root` argument (the command line's `--data-root`), then the environment
    variable MERGENAS_DATA, then the `data/` folder of the project checkout. An empty value counts
    as unset. `~` is expanded.
    """
    if data_root is not None and str(data_root) != "":
        chosen = Path(data_root)
    elif os.environ.get(DATA_ENV_VAR):
        chosen = Path(os.environ[DATA_ENV_VAR])
    else:
        chosen = DEFAULT_DATA_ROOT
    return chosen.expanduser().resolve()


def _how_to_set_root(root: Path) -> str:
    return (
        f"The data root is {root}; set the environment variable {DATA_ENV_VAR} or pass "
        f"--data-root (data_root=...) to use another folder."
    )


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as NumPy arrays: images NHWC uint8 RGB, labels int64 in 0..9."""

    x_train: np.ndarray  # (N_train, 32, 32, 3) uint8
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, 32, 32, 3) uint8
    y_test: np.ndarray  # (N_test,) int64
    classes: tuple[str, ...]
    source: Path  # the .npz file or the torchvision folder the arrays came from


# Loaded data sets, keyed by the file or folder they came from. The arrays are read-only, so
# callers that share one entry cannot change each other's data.
_CIFAR10_CACHE: dict[Path, Cifar10] = {}


def clear_cache() -> None:
    """Forget the CIFAR-10 arrays that `load_cifar10` keeps in memory."""
    _CIFAR10_CACHE.clear()


def download_enabled() -> bool:
    """Return whether MERGENAS_DOWNLOAD (set by the command line's `--download`) is 1."""
    return os.environ.get(DOWNLOAD_ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def load_cifar10(data_root: str | os.PathLike | None = None, download: bool | None = None) -> Cifar10:
    """Load CIFAR-10 from the data root, once per process and source.

    Sources, in order: `<root>/cifar10/cifar10.npz` (keys x_train, y_train, x_test, y_test,
    classes), then torchvision's files under `<root>/cifar10`. With `download=True` and neither
    present, torchvision downloads its files there, which needs a network connection. `None`
    takes the choice from the environment variable MERGENAS_DOWNLOAD.

    Raises MissingDataError when no source exists and `download` is False, and DataError when a
    file is corrupt or contains arrays of the wrong shape or dtype.
    """
    if download is None:
        download = download_enabled()
    root = resolve_data_root(data_root)
    folder = root / CIFAR10_DIR
    npz_path = folder / CIFAR10_NPZ
    torchvision_path = folder / TORCHVISION_CIFAR10_DIR

    if npz_path.is_file():
        source = npz_path
    elif torchvision_path.is_dir() or download:
        source = folder
    else:
        raise MissingDataError(
            f"CIFAR-10 not found: looked for {npz_path} and for torchvision's files in "
            f"{torchvision_path}. {_how_to_set_root(root)} That folder must contain "
            f"{CIFAR10_DIR}/{CIFAR10_NPZ}; alternatively run once with --download (or "
            f"{DOWNLOAD_ENV_VAR}=1) on a machine that is online, which lets torchvision download "
            f"CIFAR-10 into {folder}."
        )

    cached = _CIFAR10_CACHE.get(source)
    if cached is not None:
        logger.debug("CIFAR-10 from %s: using the copy already in memory", source)
        return cached

    if source == npz_path:
        data = _load_npz(npz_path)
    else:
        data = _load_torchvision(folder, download)
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        array.flags.writeable = False
    _CIFAR10_CACHE[source] = data
    logger.info(
        "loaded CIFAR-10 from %s: %d training and %d test images",
        source, len(data.x_train), len(data.x_test),
    )
    return data


_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError)


def _load_npz(path: Path) -> Cifar10:
    keys = ("x_train", "y_train", "x_test", "y_test", "classes")
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as error:
        raise DataError(
            f"cannot read {path}: {error}. The file is truncated or not a NumPy .npz archive; "
            f"replace it with a complete copy."
        ) from error

    arrays: dict[str, np.ndarray] = {}
    with archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise DataError(
                f"{path} lacks the keys {', '.join(missing)}; it contains "
                f"{', '.join(archive.files)}, expected {', '.join(keys)}."
            )
        for key in keys:
            try:
                arrays[key] = archive[key]
            except _NPZ_ERRORS as error:
                raise DataError(
                    f"cannot read key {key!r} of {path}: {error}. The file is truncated or "
                    f"corrupt; replace it with a complete copy."
                ) from error

    x_train, y_train = _checked_split(
        path, "x_train", arrays["x_train"], "y_train", arrays["y_train"]
    )
    x_test, y_test = _checked_split(path, "x_test", arrays["x_test"], "y_test", arrays["y_test"])
    classes = _checked_classes(path, arrays["classes"])
    return Cifar10(x_train, y_train, x_test, y_test, classes, path)


def _checked_split(
    source: Path, x_key: str, images: np.ndarray, y_key: str, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Check one split's images, (N, 32, 32, 3) uint8, and labels, (N,) in 0..9, as int64."""
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(
            f"key {x_key!r} of {source} has shape {images.shape} and dtype {images.dtype}, "
            f"expected shape (N, 32, 32, 3) and dtype uint8 (NHWC RGB images)."
        )
    if len(images) == 0:
        raise DataError(f"key {x_key!r} of {source} contains no images, expected at least one.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"key {y_key!r} of {source} has shape {labels.shape} and dtype {labels.dtype}, "
            f"expected shape ({len(images)},) and an integer dtype."
        )
    if len(labels) != len(images):
        raise DataError(
            f"key {y_key!r} of {source} has shape {labels.shape}, expected ({len(images)},) "
            f"to match the {len(images)} images of {x_key!r}."
        )
    if labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(
            f"key {y_key!r} of {source} has labels in {labels.min()}..{labels.max()}, "
            f"expected 0..{len(CIFAR10_CLASSES) - 1}."
        )
    return images, labels.astype(np.int64)


def _checked_classes(source: Path, classes: np.ndarray) -> tuple[str, ...]:
    if classes.shape != (len(CIFAR10_CLASSES),) or classes.dtype.kind != "U":
        raise DataError(
            f"key 'classes' of {source} has shape {classes.shape} and dtype {classes.dtype}, "
            f"expected shape ({len(CIFAR10_CLASSES)},) of strings."
        )
    return tuple(str(name) for name in classes)


def _load_torchvision(folder: Path, download: bool) -> Cifar10:
    import torchvision

    splits = {}
    for train in (True, False):
        try:
            dataset = torchvision.datasets.CIFAR10(root=str(folder), train=train, download=download)
        except RuntimeError as error:
            # torchvision raises RuntimeError when its files are absent or fail the MD5 check.
            raise DataError(
                f"torchvision could not read CIFAR-10 from {folder / TORCHVISION_CIFAR10_DIR}: "
                f"{error}. Delete that folder and run with download enabled on a machine that is "
                f"online, or put {CIFAR10_NPZ} into {folder}."
            ) from error
        except OSError as error:
            raise DataError(
                f"downloading CIFAR-10 into {folder} failed: {error}. Run on a machine that is "
                f"online, or put {CIFAR10_NPZ} into {folder}."
            ) from error
        images = np.asarray(dataset.data)
        labels = np.asarray(dataset.targets)
        x_key, y_key = ("train data", "train targets") if train else ("test data", "test targets")
        splits[train] = _checked_split(folder, x_key, images, y_key, labels)
        classes = tuple(dataset.classes)

    (x_train, y_train), (x_test, y_test) = splits[True], splits[False]
    return Cifar10(x_train, y_train, x_test, y_test, classes, folder)


def split_search_halves(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training image indices into search-train and search-validation halves.

    DARTS-style search as NAS-Bench-201 runs it trains the weights on one half of the training set
    and the architecture parameters on the other. The halves come from
    `numpy.random.default_rng(seed).permutation(num_images)`, so they are disjoint, cover
    range(num_images), are in random order and depend only on (num_images, seed). For an odd
    count the validation half gets the extra image.
    """
    if num_images < 2:
        raise ValueError(f"cannot split {num_images} images into two halves; need at least 2")
    order = np.random.default_rng(seed).permutation(num_images)
    half = num_images // 2
    return order[:half], order[half:]


def to_tensor_images(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Convert NHWC uint8 images to an NCHW uint8 tensor on `device`."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected NHWC uint8 images of shape (N, H, W, 3), got shape {array.shape} "
            f"and dtype {array.dtype}"
        )
    # torch.tensor copies, so read-only cached arrays are never shared with the tensor.
    nhwc = torch.tensor(array, dtype=torch.uint8)
    return nhwc.permute(0, 3, 1, 2).contiguous().to(device)


def _check_uint8_nchw(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 NCHW images of shape (N, 3, H, W), got shape {tuple(images.shape)} "
            f"and dtype {images.dtype}"
        )


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """Scale uint8 NCHW images to [0, 1] and normalise each channel by the CIFAR-10 mean and std."""
    _check_uint8_nchw(images)
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply the standard CIFAR augmentation to a uint8 NCHW batch, then normalise it.

    Each image is zero-padded by 4 pixels, cropped back to its size at a random offset and
    flipped horizontally with probability 1/2, as torchvision's RandomCrop(32, padding=4) and
    RandomHorizontalFlip do. The random numbers come from `generator` on its own device (a CPU
    generator is fine) in a fixed order, so the same generator state gives the same batch.
    Returns float32 NCHW on the device of `images`.
    """
    _check_uint8_nchw(images)
    batch, _, height, width = images.shape
    span = 2 * CROP_PADDING + 1  # possible crop offsets per axis: 0..8

    top = torch.randint(0, span, (batch,), generator=generator, device=generator.device)
    left = torch.randint(0, span, (batch,), generator=generator, device=generator.device)
    flip = torch.rand(batch, generator=generator, device=generator.device) < 0.5
    top, left, flip = top.to(images.device), left.to(images.device), flip.to(images.device)

    padded = F.pad(images, (CROP_PADDING,) * 4)  # (B, 3, H + 8, W + 8), zeros outside
    rows = top[:, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = left[:, None] + torch.arange(width, device=images.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)

    # Crop every image at once: gather its rows, then its columns (the flip is in the column order).
    channels = images.shape[1]
    row_index = rows[:, None, :, None].expand(batch, channels, height, padded.shape[3])
    cropped_rows = padded.gather(2, row_index)  # (B, 3, H, W + 8)
    column_index = cols[:, None, None, :].expand(batch, channels, height, width)
    cropped = cropped_rows.gather(3, column_index)
    return normalize_batch(cropped)  # (B, 3, H, W) float32


_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


def _derived_generator(*key: int) -> torch.Generator:
    """Return a CPU generator whose seed is a hash of `key` (non-negative ints)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


class BatchStream:
    """Batches of a CIFAR-10 split that already sits on the device, one epoch at a time.

    The order of epoch `e` is a permutation drawn from a generator seeded by (seed, e), and the
    augmentation of step `t` of that epoch uses a generator seeded by (seed, e, t). No state
    carries over between steps or epochs. Therefore `epoch(e, start_step=t)` yields exactly the
    batches that `epoch(e)` yields from step `t` on, and a run resumed from a checkpoint taken
    at (e, t) receives the same batches as one that was never interrupted.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
        augment: bool = True,
        drop_last: bool = True,
    ) -> None:
        _check_uint8_nchw(images)
        if labels.shape != (len(images),) or labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be int64 of shape ({len(images)},) to match the images, "
                f"got shape {tuple(labels.shape)} and dtype {labels.dtype}"
            )
        if labels.device != images.device:
            raise ValueError(
                f"images are on {images.device} but labels on {labels.device}; "
                f"move both to one device"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if drop_last and batch_size > len(images):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(images)} images, so drop_last=True "
                f"would leave no batch; use a smaller batch or drop_last=False"
            )
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def epoch(
        self, epoch_index: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Return an iterator over (images, labels) for steps start_step.. of one epoch.

        Images are float32 NCHW, normalised (and augmented if `augment`); labels are int64.
        Invalid arguments raise ValueError here, not at the first batch.
        """
        if epoch_index < 0:
            raise ValueError(f"epoch_index must be non-negative, got {epoch_index}")
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(
                f"start_step {start_step} is outside 0..{self.steps_per_epoch} "
                f"(the steps of one epoch)"
            )
        return self._batches(epoch_index, start_step)

    def _batches(
        self, epoch_index: int, start_step: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        permutation_generator = _derived_generator(_PERMUTATION_STREAM, self.seed, epoch_index)
        order = torch.randperm(len(self.images), generator=permutation_generator)
        order = order.to(self.images.device)

        for step in range(start_step, self.steps_per_epoch):
            batch_index = order[step * self.batch_size:(step + 1) * self.batch_size]
            images = self.images[batch_index]
            if self.augment:
                generator = _derived_generator(_AUGMENTATION_STREAM, self.seed, epoch_index, step)
                images = augment_batch(images, generator)
            else:
                images = normalize_batch(images)
            yield images, self.labels[batch_index]
