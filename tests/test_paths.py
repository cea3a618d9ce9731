"""Where roost keeps its files (roost.paths): ROOST_DATA_DIR moves every one of them."""

import os

from roost import paths


def test_roost_data_dir_moves_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ROOST_HISTORY_DIR", raising=False)
    for where in (paths.data_dir(), paths.cache_dir(), paths.history_dir(), paths.results_file(), paths.golden_dir(),
                  paths.self_test_file(), paths.bandwidth_file()):
        assert where == str(tmp_path) or where.startswith(str(tmp_path) + os.sep), where
    monkeypatch.setenv("ROOST_HISTORY_DIR", str(tmp_path / "elsewhere"))  # moves only the conversations
    assert paths.history_dir() == str(tmp_path / "elsewhere") and paths.results_file().startswith(str(tmp_path))


def test_without_it_the_platforms_folders(monkeypatch):
    from platformdirs import user_cache_dir, user_data_dir

    monkeypatch.delenv("ROOST_DATA_DIR")
    assert paths.data_dir() == user_data_dir("roost") and paths.cache_dir() == user_cache_dir("roost")
