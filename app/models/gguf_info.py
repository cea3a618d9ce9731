"""What a GGUF file holds, read from its header alone: the shape of the model, its
tensors' types and sizes, and whether it carries a chat template.

The gguf package supplies the format's constants (value and tensor types, block sizes).
Its GGUFReader is not used to walk the header: it builds a numpy view for every
vocabulary string and takes seconds on a file whose weights load in a tenth of one
(6.6 s for SmolLM2-135M's 49k-token vocabulary). This walk only skips over what it does
not need, and checks every length against the file, so a truncated or hostile file is
an error, never a crash or a huge allocation.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from roost.errors import ModelFileError

GGML_MAX_DIMS = 4
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_KEEP_ARRAY_UP_TO = 4096  # longer arrays (vocabularies, merges) are counted, not kept

# Sliding-window attention as llama.cpp's loaders set it (src/models/ARCH.cpp,
# hparams.set_swa_pattern(period)): of every `period` layers the last attends to the whole
# context and the others to the window. A file's attention.sliding_window_pattern
# (a period, or a flag per layer as Gemma 4 files have) takes precedence.
SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "gpt-oss": 2, "cohere2": 4}
SWA_WINDOW = {"gemma2": 4096}  # llama.cpp's default where a file gives no window


def swa_layers(n_layer: int, period: int) -> list[bool]:
    """Which of n_layer layers slide when the last of every `period` attends to all."""
    return [i % period < period - 1 for i in range(n_layer)]


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str  # "Q4_K", "F16", …
    shape: tuple[int, ...]
    n_bytes: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def layer(self) -> int | None:
        """The block index of a "blk.N.…" tensor."""
        parts = self.name.split(".")
        return int(parts[1]) if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit() else None

    @property
    def is_expert(self) -> bool:
        """A MoE expert tensor (ffn_{up,gate,down}_exps): only some are read per token."""
        return "_exps" in self.name


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    file_bytes: int
    version: int
    metadata: dict = field(repr=False)  # key -> value; long arrays as their length
    tensors: tuple[Tensor, ...] = field(repr=False)

    def _arch(self, key: str, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "unknown")

    @property
    def name(self) -> str:
        return self.metadata.get("general.name") or os.path.basename(self.path)

    @property
    def n_layer(self) -> int:
        return int(self._arch("block_count", 0))

    @property
    def n_ctx_train(self) -> int:
        return int(self._arch("context_length", 0))

    @property
    def n_embd(self) -> int:
        return int(self._arch("embedding_length", 0))

    @property
    def n_head(self) -> int:
        return _first(self._arch("attention.head_count", 0))

    @property
    def n_head_kv_per_layer(self) -> list[int]:
        """KV heads of each layer (some models vary them, and 0 marks a layer with no
        attention, as in hybrid models)."""
        value = self._arch("attention.head_count_kv", self._arch("attention.head_count", 0))
        if isinstance(value, list):
            return [int(v) for v in value]
        return [int(value)] * self.n_layer

    @property
    def n_head_kv(self) -> int:
        return max(self.n_head_kv_per_layer, default=0)

    @property
    def head_dim_k(self) -> int:
        return int(self._arch("attention.key_length", 0)) or (self.n_embd // self.n_head if self.n_head else 0)

    @property
    def head_dim_v(self) -> int:
        return int(self._arch("attention.value_length", 0)) or (self.n_embd // self.n_head if self.n_head else 0)

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens", 0)
        return int(self._arch("vocab_size", 0)) or (tokens if isinstance(tokens, int) else len(tokens))

    @property
    def n_expert(self) -> int:
        return int(self._arch("expert_count", 0))

    @property
    def n_expert_used(self) -> int:
        return int(self._arch("expert_used_count", 0))

    @property
    def swa_layers(self) -> list[bool]:
        """Which layers attend through a sliding window, as llama.cpp lays them out: a
        file's own per-layer pattern, else its period, else the architecture's."""
        pattern = self._arch("attention.sliding_window_pattern", SWA_PERIOD.get(self.architecture, 0))
        if not self._window or not pattern:
            return [False] * self.n_layer
        if isinstance(pattern, list):
            return [bool(p) for p in pattern[: self.n_layer]] + [False] * (self.n_layer - len(pattern))
        return swa_layers(self.n_layer, pattern)

    @property
    def sliding_window(self) -> int:
        """The tokens a sliding-window layer attends to; 0 when no layer slides."""
        return self._window if any(self.swa_layers) else 0

    @property
    def _window(self) -> int:
        return int(self._arch("attention.sliding_window", 0) or SWA_WINDOW.get(self.architecture, 0))

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def layer_bytes(self) -> list[int]:
        sizes = [0] * self.n_layer
        for t in self.tensors:
            if t.layer is not None and t.layer < self.n_layer:
                sizes[t.layer] += t.n_bytes
        return sizes

    @property
    def expert_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors if t.is_expert)

    @property
    def bytes_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type] = out.get(t.type, 0) + t.n_bytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def quant(self) -> str:
        """The type holding most of the weights, as quant names go ("Q4_K", "Q8_0")."""
        big = {k: v for k, v in self.bytes_by_type.items() if k not in ("F32",)}
        return next(iter(big), "F32")


def _first(value) -> int:
    return int(max(value) if isinstance(value, list) and value else value or 0)


class HeaderIncomplete(ModelFileError):
    """The bytes given end inside the header (parse_bytes on the start of a file)."""


class _Cursor:
    def __init__(self, buf, path: str, partial: bool = False):
        self.buf, self.pos, self.path, self.partial = buf, 0, path, partial

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            if self.partial and n >= 0:
                raise HeaderIncomplete(f"{self.path}: more than {len(self.buf)} bytes of header")
            raise ModelFileError(
                f"{self.path} is truncated or corrupt (its header runs past the end of the file); download it again"
            )

    def scalar(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, keep: bool = True) -> str | None:
        n = self.scalar("<Q")
        self.need(n)
        start, self.pos = self.pos, self.pos + n
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace") if keep else None

    def skip_strings(self, count: int) -> None:
        # The hot loop of a header: a vocabulary holds 50k-250k strings.
        unpack, buf, pos = _U64.unpack_from, self.buf, self.pos
        end = len(buf)
        for _ in range(count):
            if pos + 8 > end:
                pos = end + 1  # ran out before the last string: truncated
                break
            pos += 8 + unpack(buf, pos)[0]
        self.pos = min(pos, end)
        self.need(pos - self.pos)

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            keep = count <= _KEEP_ARRAY_UP_TO
            if item in _SCALARS:
                size = struct.calcsize(_SCALARS[item])
                self.need(count * size)
                if keep:
                    values = list(struct.unpack_from(f"<{count}{_SCALARS[item][1]}", self.buf, self.pos))
                self.pos += count * size
                return values if keep else count
            if item == _STRING:
                self.need(count * 8)  # every string has at least its length
                if keep:
                    return [self.string() for _ in range(count)]
                self.skip_strings(count)
                return count
            raise self.corrupt(f"an array of value type {item}")
        raise self.corrupt(f"value type {kind}")

    def corrupt(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path} is truncated or corrupt ({what} at byte {self.pos}); download it again")


def check_file(path: str) -> None:
    """The cheap checks: the file exists and starts as a GGUF file does."""
    if not os.path.exists(path):
        raise ModelFileError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a directory, not a .gguf file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF model file (it does not start with the GGUF magic bytes)")


def read(path: str) -> GGUFInfo:
    """Read a GGUF header. Raises ModelFileError, with a reason, for anything else."""
    import gguf

    check_file(path)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        return _parse(buf, path, size, gguf)
    finally:
        buf.close()


def parse_bytes(data: bytes, name: str) -> GGUFInfo:
    """Read a header from the first bytes of a file (fetched with a Range request, say).
    Raises HeaderIncomplete when they end before the header does."""
    import gguf

    if data[:4] != b"GGUF":
        raise ModelFileError(f"{name} is not a GGUF model file (it does not start with the GGUF magic bytes)")
    return _parse(data, name, None, gguf)


def _parse(buf, path: str, size: int | None, gguf) -> GGUFInfo:
    """size: the whole file's, to check the tensors are all there; None for a prefix."""
    cur = _Cursor(buf, path, partial=size is None)
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ModelFileError(f"{path} is GGUF version {version}; roost reads versions 2 and 3")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    # Every entry takes at least 8 bytes of header: larger counts cannot be honest.
    limit = (size or 2**40) // 8
    if n_tensors > limit or n_kv > limit:
        raise cur.corrupt(f"{n_tensors} tensors and {n_kv} keys claimed in {size} bytes")

    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))

    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        if not 0 < n_dims <= GGML_MAX_DIMS:
            raise cur.corrupt(f"tensor {name!r} with {n_dims} dimensions")
        shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
        kind, offset = cur.scalar("<I"), cur.scalar("<Q")
        try:
            qtype = gguf.GGMLQuantizationType(kind)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise cur.corrupt(f"tensor {name!r} of unknown type {kind} (newer than this roost's gguf package?)") from None
        n_elements = 1
        for d in shape:
            n_elements *= d
        if shape[0] % block:
            raise cur.corrupt(f"tensor {name!r}: row of {shape[0]} not a multiple of its block of {block}")
        infos.append(Tensor(name, qtype.name, shape, n_elements // block * type_size, offset))

    alignment = int(metadata.get("general.alignment", 32)) or 32
    data_start = -(-cur.pos // alignment) * alignment
    end = max((data_start + t.offset + t.n_bytes for t in infos), default=data_start)
    if size is not None and end > size:
        raise ModelFileError(
            f"{path} is truncated or corrupt (its tensors need {end} bytes, the file has {size}); download it again"
        )
    return GGUFInfo(path=path, file_bytes=size or end, version=version, metadata=metadata, tensors=tuple(infos))
