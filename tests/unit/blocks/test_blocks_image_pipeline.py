"""Image pipeline on real scikit-learn digits written as PNG files (small: 200 digits x 2 copies, 32 px)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from systems.blocks.image_pipeline import (
    ImageFolderDataset,
    Sample,
    compute_mean_std,
    list_images,
    make_dataloader,
    measure_throughput,
    split_samples,
    write_digits_images,
)

pytestmark = pytest.mark.unit

N_DIGITS, COPIES, SIZE = 200, 2, 32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_images(tmp_path_factory.mktemp("digits"), size=SIZE, copies=COPIES, limit=N_DIGITS)


def test_files_are_the_real_digits(root: Path) -> None:
    samples = list_images(root)
    assert len(samples) == N_DIGITS * COPIES
    digits = load_digits()
    for s in samples[:: COPIES * 7]:
        assert s.label == digits.target[s.source]
        with Image.open(s.path) as img:
            assert img.size == (SIZE, SIZE) and img.mode == "L"
            small = np.asarray(img.resize((8, 8), Image.Resampling.BOX), dtype=float)
        if s.path.stem.endswith("_000"):  # the unshifted copy looks like the original 8x8 digit
            corr = np.corrcoef(small.ravel(), digits.images[s.source].ravel())[0, 1]
            assert corr > 0.9


def test_write_is_idempotent(root: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/*.png")}
    write_digits_images(root, size=SIZE, copies=COPIES, limit=N_DIGITS)
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*.png")} == before


def test_rewrite_with_other_parameters_and_distinct_copies(tmp_path: Path) -> None:
    write_digits_images(tmp_path, size=8, copies=11, limit=3)
    files = sorted(tmp_path.glob("*/*.png"))
    assert len(files) == 33
    pixels = set()
    for f in files:
        with Image.open(f) as img:
            pixels.add(np.asarray(img).tobytes())
    assert len(pixels) == 33  # every copy differs from the others
    write_digits_images(tmp_path, size=8, copies=1, limit=3)
    assert len(list(tmp_path.glob("*/*.png"))) == 3  # stale files removed


def test_split_keeps_copies_together(root: Path) -> None:
    train, val = split_samples(list_images(root), val_fraction=0.25, seed=0)
    assert len(train) + len(val) == N_DIGITS * COPIES
    assert len(val) == 0.25 * N_DIGITS * COPIES
    assert not {s.source for s in train} & {s.source for s in val}
    assert split_samples(list_images(root), val_fraction=0.25, seed=0) == (train, val)


def test_dataset_shapes_and_ranges(root: Path) -> None:
    samples = list_images(root)
    ds = ImageFolderDataset(samples, size=16)
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    rgb, _ = ImageFolderDataset(samples, size=16, mode="RGB")[0]
    assert rgb.shape == (3, 16, 16)
    torch.testing.assert_close(rgb[0], x[0])  # gray -> RGB replicates the channel
    with pytest.raises(ValueError):
        ImageFolderDataset(samples, mean=[0.5, 0.5], std=[1.0, 1.0])


def test_mean_std_match_numpy_on_training_split(root: Path) -> None:
    train, _ = split_samples(list_images(root))
    mean, std = compute_mean_std(train, size=SIZE, batch_size=64)
    raw = ImageFolderDataset(train, size=SIZE)
    allx = np.stack([raw.load(i).numpy() for i in range(len(raw))]).astype(np.float64)
    np.testing.assert_allclose(mean, [allx.mean()], rtol=1e-9)
    np.testing.assert_allclose(std, [allx.std()], rtol=1e-7)
    assert 0.05 < mean[0] < 0.6 and 0.1 < std[0] < 0.5  # mostly-black digits


def test_normalised_training_batches(root: Path) -> None:
    loader = make_dataloader(root, batch_size=32, num_workers=0, seed=0, size=SIZE, drop_last=False)
    xs, ys = zip(*loader, strict=True)
    x = torch.cat(xs).double()
    assert x.shape[1:] == (1, SIZE, SIZE)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    assert set(torch.cat(ys).tolist()) == set(range(10))
    # the validation loader uses the *training* statistics, in file order
    val = make_dataloader(root, batch_size=32, num_workers=0, seed=0, size=SIZE, train=False)
    xv = torch.cat([b for b, _ in val])
    assert abs(float(xv.mean())) < 0.2  # close to, but not exactly, 0
    assert val.drop_last is False


def test_seeded_shuffle_is_deterministic_across_workers(root: Path) -> None:
    def labels(seed: int, workers: int) -> list[list[int]]:
        dl = make_dataloader(root, batch_size=50, num_workers=workers, seed=seed, size=8, mean=[0.3], std=[0.3])
        return [[int(v) for _, y in dl for v in y] for _epoch in range(2)]

    a = labels(0, 0)
    assert a == labels(0, 0)
    assert a[0] != a[1]  # a new order each epoch, from the same generator
    assert a != labels(1, 0)
    assert a == labels(0, 2)  # workers do not change the order


def test_loader_settings(root: Path) -> None:
    dl = make_dataloader(root, batch_size=16, num_workers=2, seed=0, size=8, mean=[0.3], std=[0.3])
    assert dl.num_workers == 2 and dl.persistent_workers and dl.prefetch_factor == 4 and dl.drop_last
    assert dl.pin_memory == torch.cuda.is_available()


def test_measure_throughput_reports_each_worker_count(root: Path) -> None:
    rates = measure_throughput(root, num_workers=(0, 1), batch_size=64, size=16, repeats=1)
    assert set(rates) == {0, 1} and all(r > 50 for r in rates.values())


def test_ranks_get_disjoint_shards(root: Path) -> None:
    train, _ = split_samples(list_images(root))
    shards = []
    for rank in (0, 1):
        dl = make_dataloader(
            root, batch_size=16, num_workers=0, seed=0, size=8, mean=[0.3], std=[0.3], rank=rank, world_size=2
        )
        indices = list(iter(dl.sampler))  # indices into the same training split on every rank
        assert sum(x.shape[0] for x, _ in dl) == len(indices) // 16 * 16  # drop_last when training
        shards.append(set(indices))
    assert not shards[0] & shards[1]
    assert len(shards[0]) == len(shards[1]) == len(train) // 2


def test_distributed_one_rank_draws_the_global_batches_of_two(root: Path) -> None:
    """``distributed=True`` with 1 rank: each batch of 2b is the union of the two ranks' batches of b."""
    kw = {"num_workers": 0, "seed": 3, "size": 8, "mean": [0.3], "std": [0.3], "distributed": True}
    one = make_dataloader(root, batch_size=16, rank=0, world_size=1, **kw)
    two = [make_dataloader(root, batch_size=8, rank=r, world_size=2, **kw) for r in (0, 1)]
    for dl in (one, *two):
        dl.sampler.set_epoch(1)  # type: ignore[attr-defined]
    idx_one = list(iter(one.batch_sampler))  # type: ignore[arg-type]
    idx_r0, idx_r1 = (list(iter(dl.batch_sampler)) for dl in two)  # type: ignore[arg-type]
    sampler_r0 = list(iter(two[0].sampler))
    sampler_r1 = list(iter(two[1].sampler))
    assert len(idx_one) == len(idx_r0) == len(idx_r1)
    for b1, b0, br1 in zip(idx_one, idx_r0, idx_r1, strict=True):
        assert sorted(b1) == sorted(b0 + br1)
    assert not set(sampler_r0) & set(sampler_r1)


def _one(path: Path, **kw: object) -> ImageFolderDataset:
    return ImageFolderDataset([Sample(path, 0, 0)], **kw)  # type: ignore[arg-type]


def test_truncated_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "0" / "00007_000.png"
    path.parent.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=re.escape(str(path))):
        _one(path, size=64).load(0)
    with pytest.raises(OSError, match=re.escape(str(path))):  # the same from a worker process
        next(iter(DataLoader(_one(path, size=64), num_workers=1)))


def test_sixteen_bit_grey_keeps_its_range(tmp_path: Path) -> None:
    """A real 16-bit PNG written by Pillow: v / 65535, not clipped at 255 of 65535."""
    v = np.array([0, 255, 256, 1000, 257 * 128, 40000, 65534, 65535] * 2, dtype=np.uint16).reshape(4, 4)
    path = tmp_path / "g16.png"
    Image.fromarray(v).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")  # it really is 16-bit on disk
    grey = _one(path, size=4).load(0)  # PIL's resize to the same size is an exact copy
    assert grey.shape == (1, 4, 4)
    np.testing.assert_allclose(grey[0].numpy(), v / 65535.0, rtol=0, atol=1e-7)
    rgb = _one(path, size=4, mode="RGB").load(0)
    assert rgb.shape == (3, 4, 4)
    for c in range(3):
        torch.testing.assert_close(rgb[c], grey[0])
    # the same picture in 8 bits (the high byte) loads to within one 8-bit step
    path8 = tmp_path / "g8.png"
    Image.fromarray((v >> 8).astype(np.uint8)).save(path8)
    assert float((_one(path8, size=4).load(0) - grey).abs().max()) < 1 / 255


def test_alpha_is_composited_onto_the_background(tmp_path: Path) -> None:
    rgba = np.array(
        [[[255, 0, 0, 255], [255, 0, 0, 0]], [[0, 0, 255, 128], [0, 255, 0, 51]]], dtype=np.uint8
    )  # opaque red, transparent red, half-transparent blue, 20%-opaque green
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)

    def pixels(**kw: object) -> np.ndarray:
        x = _one(path, size=2, mode="RGB", **kw).load(0)  # (3, 2, 2) in [0, 1]
        return np.rint(x.numpy().transpose(1, 2, 0) * 255).astype(int)

    # white default: a·x + (1 - a)·255 with a = alpha / 255, e.g. 255·127/255 = 127
    assert pixels().tolist() == [[[255, 0, 0], [255, 255, 255]], [[127, 127, 255], [204, 255, 204]]]
    assert pixels(background=(0, 0, 0)).tolist() == [[[255, 0, 0], [0, 0, 0]], [[0, 0, 128], [0, 51, 0]]]
    assert pixels(background=(10, 20, 30)).tolist()[0][1] == [10, 20, 30]
    # grey with alpha into a 1-channel dataset: transparent becomes the (white) page
    la = tmp_path / "la.png"
    Image.fromarray(np.array([[[100, 0], [100, 255]], [[0, 0], [0, 255]]], dtype=np.uint8), "LA").save(la)
    assert np.rint(_one(la, size=2).load(0).numpy() * 255).astype(int).tolist() == [[[255, 100], [255, 0]]]
    with pytest.raises(ValueError, match="background"):
        _one(path, background=(0, 0, 256))


def test_list_images_matches_extensions_case_insensitively(tmp_path: Path) -> None:
    img = Image.fromarray(np.full((8, 8), 200, dtype=np.uint8))
    for rel in ("3/00001_000.PNG", "3/00002_000.jpg", "4/00003_000.JPEG", "4/00004_000.Png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        img.save(tmp_path / rel, format="PNG" if rel.lower().endswith("png") else "JPEG")
    (tmp_path / "4" / "notes.txt").write_text("not an image")
    samples = list_images(tmp_path)
    assert [(s.path.name, s.label, s.source) for s in samples] == [
        ("00001_000.PNG", 3, 1),
        ("00002_000.jpg", 3, 2),
        ("00003_000.JPEG", 4, 3),
        ("00004_000.Png", 4, 4),
    ]
    assert [p.name for p in (s.path for s in list_images(tmp_path, extensions=("PNG",)))] == [
        "00001_000.PNG",
        "00004_000.Png",
    ]
    x, y = ImageFolderDataset(samples, size=8)[1]  # the JPEG decodes too
    assert y == 3 and abs(float(x.mean()) - 200 / 255) < 0.02


@pytest.mark.parametrize("folder", ["cat", "-1", "1.5"])
def test_non_integer_class_folder_is_a_clear_error(tmp_path: Path, folder: str) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / folder).mkdir()
    img = Image.fromarray(np.zeros((8, 8), dtype=np.uint8))
    img.save(tmp_path / "0" / "a.png")
    img.save(tmp_path / folder / "b.png")
    with pytest.raises(ValueError, match=rf"class folder .*{re.escape(folder)}.* non-negative integer label"):
        list_images(tmp_path)
