"""Model files made for tests from the real SmolLM2 GGUF."""

from __future__ import annotations

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata


def with_chat_template(source: str, dest: str, template: str | None) -> str:
    """A copy of `source` whose chat template is `template` (None: no template at all)."""
    reader = gguf.GGUFReader(source, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch=arch, endianess=reader.endianess)
    new, remove = {}, []
    if template is None:
        remove = [name for name in reader.fields if name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE)]
    else:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(gguf.GGUFValueType.STRING, template)
    copy_with_new_metadata(reader, writer, new, remove)
    return dest


def truncated(source: str, dest: str, keep_fraction: float = 0.5) -> str:
    with open(source, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(data[: int(len(data) * keep_fraction)])
    return dest
