"""GGUF headers: read fast, and refuse damaged or hostile files with a reason."""

import struct
import time

import gguf
import pytest

from gguf_files import truncated
from roost.models import gguf_info
from roost.errors import ModelFileError


@pytest.fixture(scope="module")
def info(demo_gguf):
    return gguf_info.read(demo_gguf)


def test_shape_of_smollm2(info):
    assert info.architecture == "llama"
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (30, 576, 9, 3)
    assert (info.head_dim_k, info.head_dim_v, info.n_vocab, info.n_ctx_train) == (64, 64, 49152, 8192)
    assert info.n_expert == 0 and "<|im_start|>" in info.metadata["tokenizer.chat_template"]
    assert info.quant == "Q4_1" and set(info.bytes_by_type) == {"Q4_1", "Q8_0", "F32"}
    assert 134e6 < info.n_params < 135e6
    assert len(info.layer_bytes) == 30 and len(set(info.layer_bytes)) == 1


def test_sizes_agree_with_the_gguf_package_reader(info, demo_gguf):
    reader = gguf.GGUFReader(demo_gguf)
    assert {t.name: int(t.n_bytes) for t in reader.tensors} == {t.name: t.n_bytes for t in info.tensors}
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_sizes_agree_with_what_llama_cpp_loads(info, llama_engine):
    assert abs(llama_engine.memory().buffers["model"] - info.tensor_bytes) < 0.01 * 2**20


def test_reading_is_fast(demo_gguf):
    start = time.perf_counter()
    gguf_info.read(demo_gguf)
    assert time.perf_counter() - start < 2  # seconds, generous: GGUFReader needs ~6 here


@pytest.mark.parametrize("keep", [0.00001, 0.001, 0.01, 0.5, 0.9999])
def test_truncated_files_are_refused(demo_gguf, tmp_path, keep):
    cut = truncated(demo_gguf, str(tmp_path / "cut.gguf"), keep)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        gguf_info.read(cut)


def header(n_tensors=0, n_kv=0, version=3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_string(key: str, value: bytes, claimed_len: int | None = None) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, claimed_len or len(value)) + value


HOSTILE = {
    "absurd counts": header(n_tensors=2**62, n_kv=2**62),
    "string longer than the file": header(n_kv=1) + kv_string("general.name", b"x", claimed_len=2**60),
    "array of 2^60 strings": header(n_kv=1) + struct.pack("<Q", 3) + b"abc" + struct.pack("<IIQ", 9, 8, 2**60),
    "unknown value type": header(n_kv=1) + struct.pack("<Q", 3) + b"abc" + struct.pack("<I", 77),
    "tensor with 99 dimensions": header(n_tensors=1) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 99),
    "tensor of unknown type": header(n_tensors=1) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 32, 999, 0),
    "tensor data past the end": header(n_tensors=1) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 2**40, 0, 0),
    "version 1": header(version=1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_are_refused_quickly(tmp_path, name):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(HOSTILE[name])
    start = time.perf_counter()
    with pytest.raises(ModelFileError) as err:
        gguf_info.read(str(path))
    assert time.perf_counter() - start < 1
    assert str(path) in str(err.value)


def test_not_gguf_and_missing(tmp_path):
    (tmp_path / "a.gguf").write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        gguf_info.read(str(tmp_path / "a.gguf"))
    with pytest.raises(ModelFileError, match="no such model file"):
        gguf_info.read(str(tmp_path / "b.gguf"))
