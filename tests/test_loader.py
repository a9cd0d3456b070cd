import os

import numpy as np
import pytest
import torch

from conftest import write_dataset
from loader import TokenWindows, check_vocab, read_meta


@pytest.fixture
def counting_data(tmp_path):
    ids = np.arange(5000) % 60000  # token i at position i: windows are easy to check
    return write_dataset(str(tmp_path / "d"), ids, ids[:600], 60001)


def test_windows_are_shifted_slices_of_the_data(counting_data):
    meta = read_meta(counting_data)
    w = TokenWindows(counting_data, "train", 32, meta, seed=1)
    x, y = w.batch(step=7, global_batch=8, first=0, count=8)
    assert x.dtype == torch.int64 and x.shape == (8, 32)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.int64))  # contiguous slices
    assert x.min() >= 0 and y.max() < 5000


def test_windows_are_a_pure_function_of_seed_step_and_index(counting_data):
    meta = read_meta(counting_data)
    a = TokenWindows(counting_data, "train", 32, meta, seed=1)
    b = TokenWindows(counting_data, "train", 32, meta, seed=1)
    whole, _ = a.batch(3, 8, 0, 8)
    # 8 ranks x 1 sequence, or 2 micro-steps x 4: the same windows of the global batch
    parts = torch.cat([b.batch(3, 8, i, 1)[0] for i in range(8)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole[4:], b.batch(3, 8, 4, 4)[0])
    assert not torch.equal(whole, a.batch(4, 8, 0, 8)[0])  # another step, other windows
    other_seed = TokenWindows(counting_data, "train", 32, meta, seed=2)
    assert not torch.equal(whole, other_seed.batch(3, 8, 0, 8)[0])
    assert not torch.equal(whole, a.batch(3, 8, 0, 8, stream=1)[0])  # eval draws differ from training


def test_uint32_data(tmp_path):
    ids = np.arange(3000, dtype=np.uint32) + 70_000
    folder = write_dataset(str(tmp_path / "big"), ids, ids, 100_000, dtype="uint32")
    w = TokenWindows(folder, "train", 16, read_meta(folder), seed=0)
    x, _ = w.batch(0, 2, 0, 2)
    assert x.min() >= 70_000


def test_nanogpt_data_without_meta_is_gpt2(tmp_path):
    folder = write_dataset(str(tmp_path / "n"), np.arange(100), np.arange(100), 50257)
    os.remove(os.path.join(folder, "meta.json"))
    meta = read_meta(folder)
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"


def test_errors(tmp_path, counting_data):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        read_meta(str(tmp_path / "nope"))
    empty = write_dataset(str(tmp_path / "e"), [], [1, 2], 10)
    with pytest.raises(FileNotFoundError, match="too few documents"):
        read_meta(empty)
    open(os.path.join(counting_data, ".incomplete"), "w").close()
    with pytest.raises(FileNotFoundError, match="interrupted prepare_data.py"):
        read_meta(counting_data)
    os.remove(os.path.join(counting_data, ".incomplete"))
    meta = read_meta(counting_data)
    with pytest.raises(ValueError, match="lower --block_size"):
        TokenWindows(counting_data, "val", 1000, meta, seed=0)
    with pytest.raises(ValueError, match="vocab"):
        check_vocab(meta, 50257, counting_data)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_no_mapping_is_held_between_batches(counting_data):
    """A memmap kept open for a whole run keeps every page it touched resident (nanoGPT
    reopens it per batch for this reason): the loader must release its mapping."""
    w = TokenWindows(counting_data, "train", 32, read_meta(counting_data), seed=0)
    for step in range(3):
        w.batch(step, 4, 0, 4)
    with open("/proc/self/maps") as fh:
        assert w.path not in fh.read()
