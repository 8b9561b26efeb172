import gzip

import numpy as np
import pytest
import torch

from harness.data.idx import read_idx, write_idx
from harness.data.stream import ExampleStream
from harness.data.text import build_vocab, kjv_to_ptb, load_corpus, normalize_words, ptb_files
from harness.errors import BatchscaleError, DatasetMissing
from harness.workloads import get_workload


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 4) * 3).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / f"a{suffix}", arr)
    back = read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)


def test_idx_header_is_the_documented_one(tmp_path):
    write_idx(tmp_path / "labels.gz", np.array([7, 2, 1], dtype=np.uint8))
    raw = gzip.decompress((tmp_path / "labels.gz").read_bytes())
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_idx_rejects_a_non_idx_and_a_truncated_file(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(BatchscaleError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(BatchscaleError, match="needs 5"):
        read_idx(tmp_path / "y")


def test_fmnist_workload_reads_idx_from_data_dir(data_dir):
    d = get_workload("fmnist_lstm", {}, str(data_dir)).load()
    x, y = d.train
    assert x.shape == (512, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert d.eval[0].shape == (128, 28, 28)
    assert d.info["source"].endswith("fashion-mnist")


def test_mnist_loader_reads_uncompressed_idx(data_dir):
    d = get_workload("mnist_lstm", {"train_examples": 100}, str(data_dir)).load()
    assert d.train_size == 100


def test_missing_dataset_names_package_path_and_option(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.workloads.images.FashionMnistLSTM.system_dirs", (str(tmp_path / "nowhere"),))
    with pytest.raises(DatasetMissing) as e:
        get_workload("fmnist_lstm", {}, str(tmp_path / "empty")).load()
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and str(tmp_path / "empty" / "fashion-mnist") in msg
    assert "--data-dir" in msg and "BATCHSCALE_DATA_DIR" in msg and "\n" not in msg


def test_missing_mnist_and_ptb_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetMissing, match="not packaged for Debian.*<data_dir>/mnist"):
        get_workload("mnist_lstm", {}, str(tmp_path)).load()
    with pytest.raises(DatasetMissing, match="ptb.train.txt.*<data_dir>/ptb"):
        ptb_files(str(tmp_path))


def test_ptb_corpus_vocab_eos_and_unk(data_dir):
    corpus = load_corpus(ptb_files(str(data_dir)), vocab_size=10_000)
    assert corpus.vocab[:2] == ["<eos>", "<unk>"]
    words = set(corpus.vocab)
    assert {"the", "cat", "N", "mat"} <= words and "zebra" not in words
    test_words = [corpus.vocab[i] for i in corpus.test]
    assert "<unk>" in test_words and test_words.count("<eos>") == 41
    assert corpus.train.dtype == np.int64


def test_vocab_keeps_the_most_frequent_words():
    vocab = build_vocab("a a a b b c d <eos>".split(), vocab_size=4)
    assert vocab == ["<eos>", "<unk>", "a", "b"]


def test_lm_windows_have_20_inputs_and_shifted_targets(data_dir):
    wl = get_workload("ptb_lstm_lm", {"unrolled_steps": 5}, str(data_dir))
    d = wl.load()
    (w,) = d.train
    assert w.shape[1] == 6
    assert torch.equal(w[0, 5], w[1, 0])  # stride 5: the last target of a window starts the next


def test_kjv_conversion_to_ptb_format():
    text = "\nGenesis 1\n\n  1 In the beginning God's word, 12 days.\n  2 And THE earth.\n"
    train, valid, test = kjv_to_ptb(text)
    assert train == ["in the beginning god 's word N days", "and the earth"] and not valid and not test
    assert normalize_words("O LORD, thou art my God: (Selah.)") == ["o", "lord", "thou", "art", "my", "god", "selah"]


def test_kjv_chapters_are_dealt_round_robin_into_splits():
    text = "".join(f"Book {c}\n  1 verse of chapter {c}\n" for c in range(1, 41))
    train, valid, test = kjv_to_ptb(text)
    assert (len(train), len(valid), len(test)) == (36, 2, 2)
    assert valid[0] == "verse of chapter N"


def test_mnist1d_is_generated_once_and_cached():
    wl = get_workload("mnist1d_mlp", {"n_train": 900, "n_test": 100})
    d = wl.load()
    assert d.train[0].shape == (900, 40) and d.eval[0].shape == (100, 40)
    from harness.data.mnist1d import load_mnist1d

    again = load_mnist1d(900, 100, 42)
    np.testing.assert_array_equal(again["x"], d.train[0].numpy())


def test_stream_is_a_sequence_of_permutations_crossing_epochs():
    s = ExampleStream(10, data_seed=3)
    first = s.take(7)
    second = s.take(7)  # 3 from epoch 0, 4 from epoch 1
    epoch0 = torch.cat([first, second[:3]])
    assert sorted(epoch0.tolist()) == list(range(10))
    assert s.position == 14
    again = ExampleStream(10, data_seed=3)
    assert torch.equal(again.take(14), torch.cat([first, second]))
    assert not torch.equal(ExampleStream(10, data_seed=4).take(10), epoch0)


def test_stream_batch_larger_than_dataset_spans_several_epochs():
    s = ExampleStream(4, data_seed=0)
    idx = s.take(10)
    assert len(idx) == 10 and sorted(idx[:4].tolist()) == [0, 1, 2, 3] and sorted(idx[4:8].tolist()) == [0, 1, 2, 3]


def test_idx_shape_is_read_from_the_header_alone(data_dir):
    from harness.data.idx import read_idx_shape

    assert read_idx_shape(data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz") == (512, 28, 28)
    wl = get_workload("fmnist_lstm", {"train_examples": 100}, str(data_dir))
    assert wl.train_size() == 100 and get_workload("fmnist_lstm", {}, str(data_dir)).train_size() == 512


def test_large_mnist1d_is_generated_in_seeded_chunks_with_exact_sizes(monkeypatch, tmp_path):
    """Above PARALLEL_ABOVE samples the set is made in chunks on all cores: exact train/test sizes,
    balanced classes, the same arrays on every call (each chunk's seed comes from the data seed)."""
    import numpy as np

    import harness.data.mnist1d as m

    monkeypatch.setattr(m, "PARALLEL_ABOVE", 1000)
    monkeypatch.setattr(m, "CHUNK", 3000)
    monkeypatch.setenv("BATCHSCALE_CACHE_DIR", str(tmp_path))
    for total in (7000, 9990, 3000):
        sizes = m._chunks(total)
        assert sum(sizes) == total and all(s % 10 == 0 and s <= 3000 + 10 for s in sizes), sizes
    d = m.load_mnist1d(7000, 2000, 5)
    assert d["x"].shape == (7000, 40) and d["x_test"].shape == (2000, 40)
    assert np.bincount(d["y"], minlength=10).tolist() == [700] * 10
    again = m._generate(7000, 2000, 5)
    assert np.array_equal(again["x"].astype(np.float32), d["x"]) and np.array_equal(again["y_test"], d["y_test"])
    assert not np.array_equal(m._generate(7000, 2000, 6)["x"], d["x"])
    assert abs(float(d["x"].std()) - 1) < 0.02  # each chunk standardized; together still ~unit
