"""Thread settings: validation, persistence, reload, concurrent commits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pglocalai.errors import InvalidArgument, UnknownSetting
from pglocalai.service import settings as st
from pglocalai.service.config import ServiceConfig


def test_defaults_follow_azure() -> None:
    values = st.defaults()
    assert values == {"intra_op_parallelism": st.cpu_count(), "inter_op_parallelism": 1,
                      "spin_control": True}


@pytest.mark.parametrize(("key", "given", "expected"), [
    ("intra_op_parallelism", "4", 4), ("intra_op_parallelism", 3, 3),
    ("inter_op_parallelism", " 2 ", 2), ("spin_control", "false", False),
    ("spin_control", "ON", True), ("spin_control", False, False), ("spin_control", "0", False),
])
def test_values_are_parsed_to_native_types(key: str, given: object, expected: object) -> None:
    assert st.parse(key, given) == expected


@pytest.mark.parametrize(("key", "given"), [
    ("intra_op_parallelism", "0"), ("intra_op_parallelism", "-1"),
    ("intra_op_parallelism", "two"), ("intra_op_parallelism", True),
    ("inter_op_parallelism", "100000"), ("inter_op_parallelism", 1.5),
    ("spin_control", "maybe"), ("spin_control", None),
])
def test_bad_values_get_a_clear_error(key: str, given: object) -> None:
    with pytest.raises(InvalidArgument, match=f"invalid value for {key}"):
        st.parse(key, given)


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownSetting) as info:
        st.parse("intra_op_threads", "2")
    assert info.value.hint is not None
    for key in st.KEYS:
        assert key in info.value.hint
    s = st.Settings(None, st.defaults())
    with pytest.raises(UnknownSetting):
        s.get(["spin_control", "nope"])
    assert s.get(["spin_control"]) == {"spin_control": True}


def test_commit_persists_and_load_reads_back(tmp_path: Path) -> None:
    s = st.Settings.load(tmp_path)
    new = s.validate("intra_op_parallelism", "1")
    assert s.get()["intra_op_parallelism"] == st.cpu_count()  # validate changes nothing
    s.commit(new)
    assert json.loads((tmp_path / "settings.json").read_text())["intra_op_parallelism"] == 1
    assert st.Settings.load(tmp_path).get() == new
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temp file left


def test_corrupt_or_odd_file_falls_back_to_defaults(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text("{ not json")
    assert st.Settings.load(tmp_path).get() == st.defaults()
    (tmp_path / "settings.json").write_text(json.dumps(
        {"spin_control": False, "bogus": 1, "inter_op_parallelism": "x"}))
    values = st.Settings.load(tmp_path).get()
    assert values["spin_control"] is False and values["inter_op_parallelism"] == 1
    assert "bogus" not in values


def test_concurrent_commits_leave_a_valid_file(tmp_path: Path) -> None:
    s = st.Settings.load(tmp_path)
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(20):
            s.commit(s.validate("intra_op_parallelism", str(1 + (n + i) % 8)))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = st.Settings.load(tmp_path).get()
    assert on_disk == s.get()
    assert 1 <= on_disk["intra_op_parallelism"] <= 8
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_config_flag_over_env_over_default() -> None:
    env = {"PGLOCALAI_WORKERS": "2", "PGLOCALAI_MAX_QUEUE": "50", "PGLOCALAI_HOME": "/srv/pgl",
           "PGLOCALAI_DAEMON": "yes"}
    cfg = ServiceConfig.resolve({"workers": 1, "max_queue": None}, env)
    assert (cfg.workers, cfg.max_queue, cfg.state_dir, cfg.daemon) == (1, 50, "/srv/pgl", True)
    assert ServiceConfig.resolve({}, {}).batch_wait_ms == ServiceConfig().batch_wait_ms


@pytest.mark.parametrize("tcp", ["0.0.0.0:5000", "10.1.2.3:5000", "[::]:5000", "example:1",
                                 "127.0.0.1", "127.0.0.1:99999"])
def test_config_refuses_non_loopback_or_malformed_tcp(tcp: str) -> None:
    with pytest.raises(InvalidArgument):
        ServiceConfig.resolve({"tcp": tcp, "secret_file": "/dev/null"}, {})


def test_config_tcp_needs_a_secret_and_accepts_loopback() -> None:
    with pytest.raises(InvalidArgument, match="secret"):
        ServiceConfig.resolve({"tcp": "127.0.0.1:5000"}, {})
    cfg = ServiceConfig.resolve({"tcp": "[::1]:0", "secret_file": "s"}, {})
    assert cfg.tcp_address() == ("::1", 0)


@pytest.mark.parametrize("flags", [{"workers": 0}, {"max_batch_tokens": -5},
                                   {"log_format": "xml"}, {"batch_wait_ms": -1.0}])
def test_config_validates_values(flags: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        ServiceConfig.resolve(flags, {})
