"""Where netadapt looks for files: an explicit root, then the user's folder, then what
it ships; it writes only to the user's folder."""

from __future__ import annotations

import shutil

import yaml

from netadapt.latency import load_device, load_table
from netadapt.latency.table import find_table, tables_dir
from netadapt.resources import find_config, search_roots, shipped_dir, user_dir
from netadapt.spec import load_spec


def test_the_user_folder_comes_from_netadapt_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    assert user_dir() == tmp_path
    assert search_roots() == [tmp_path, shipped_dir()]
    assert search_roots(tmp_path / "x") == [tmp_path / "x"]  # explicit: that alone
    monkeypatch.delenv("NETADAPT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_dir() == tmp_path / "data" / "netadapt"


def test_a_users_device_profile_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    shipped = yaml.safe_load((shipped_dir() / "configs/devices/local-ref.yaml").read_text())
    (tmp_path / "configs" / "devices").mkdir(parents=True)
    (tmp_path / "configs/devices/local-ref.yaml").write_text(
        yaml.safe_dump({**shipped, "description": "mine"}))
    assert load_device("local-ref").description == "mine"
    assert load_device("local-ref", root=shipped_dir()).description != "mine"
    assert load_device("pixel").path == shipped_dir() / "configs/devices/pixel.yaml"


def test_tables_are_read_from_the_user_folder_first_and_written_only_there(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    assert find_table("pixel") == (shipped_dir() / "latency_tables/pixel/table.csv.gz",
                                   shipped_dir() / "latency_tables/pixel/meta.json")
    assert tables_dir() == tmp_path / "latency_tables"  # profile writes here
    shutil.copytree(shipped_dir() / "latency_tables/pixel", tmp_path / "latency_tables/pixel")
    assert find_table("pixel")[0] == tmp_path / "latency_tables/pixel/table.csv.gz"
    assert load_table("pixel").predict_ms(load_spec("mobilenetv3_small")) > 0


def test_a_bare_spec_name_means_the_shipped_spec_unless_a_file_has_that_name(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("mobilenetv3_small") == shipped_dir() / "configs/mobilenetv3_small.yaml"
    assert load_spec("mobilenetv3_small").name == load_spec(
        shipped_dir() / "configs/mobilenetv3_small.yaml").name
    shutil.copy(shipped_dir() / "configs/mobilenetv3_large.yaml", tmp_path / "mobilenetv3_small")
    assert load_spec("mobilenetv3_small").name == "mobilenetv3_large"  # the file here wins
