"""The dash-free pieces of the web boundary: path confinement (opdwatch.web_paths, LiveRun(root=)) and
Host-name parsing (opdwatch.dashboards.hosts)."""

from __future__ import annotations

import shutil

import pytest

from opdwatch.dashboards.hosts import allowed_hosts, host_name, is_loopback
from opdwatch.errors import OpdwatchError
from opdwatch.live import LiveRun
from opdwatch.reader import RunReadWarning
from opdwatch.web_paths import confine, inside, runs_root


def test_confine_follows_every_symlink(tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "run" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "run" / "ok").symlink_to(root / "run", target_is_directory=True)
    base = runs_root(root)
    assert inside(root / "run" / "file", base) and inside(root / "run" / "ok" / "x", base)
    assert not inside(root / "run" / "link" / "x", base) and not inside(root / ".." / "outside", base)
    assert confine(root / "run", base) == base / "run"
    with pytest.raises(OpdwatchError, match="outside the runs root"):
        confine(root / "run" / "link" / "steps", base)


def test_live_run_with_a_root_skips_files_linked_from_outside(tmp_path, run_writer):
    root = tmp_path / "runs"
    run_writer(tmp_path / "outside", collapse_at=100).steps(5)
    inside_run = root / "inside"
    run_writer(inside_run, collapse_at=100).steps(2)
    shutil.rmtree(inside_run / "rollouts")
    (inside_run / "rollouts").symlink_to(tmp_path / "outside" / "rollouts", target_is_directory=True)
    assert LiveRun(inside_run).rollout_steps() == [0, 1, 2, 3, 4]  # without root= the link is followed
    with pytest.warns(RunReadWarning, match="outside the runs root"):
        live = LiveRun(inside_run, root=root)
    assert live.rollout_steps() == [] and live.table_parts("rollouts") == []
    assert live.steps("train").collect()["step"].to_list() == [0, 1]  # the run's own files are still read
    with pytest.raises(OpdwatchError):
        LiveRun(tmp_path / "outside", root=root)  # a run outside the root is not opened at all


@pytest.mark.parametrize(("raw", "name"), [
    ("localhost", "localhost"), ("LocalHost.:8050", "localhost"), ("127.0.0.1:1", "127.0.0.1"),
    ("[::1]:8050", "[::1]"), ("[0:0::1]", "[::1]"), ("::1", "[::1]"), ("my_box.lan", "my_box.lan"),
    ("", None), (None, None), ("a b", None), ("x:0", None), ("x:65536", None), ("[::g]", None), ("a/b", None),
    ("http://x", None), ("x:80:80", None), ("é.example", None),
])
def test_host_name_parses_host_headers(raw, name):
    assert host_name(raw) == name


def test_allowed_hosts_and_loopback():
    assert allowed_hosts() == {"localhost", "127.0.0.1", "[::1]"}
    assert allowed_hosts("0.0.0.0") == allowed_hosts("::") == allowed_hosts()
    assert allowed_hosts("10.1.2.3", ["Proxy.Example:443", "fe80::1"]) == {
        "localhost", "127.0.0.1", "[::1]", "10.1.2.3", "proxy.example", "[fe80::1]"}
    with pytest.raises(ValueError, match="not a host name"):
        allowed_hosts(None, ["bad name"])
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]", "a.localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "example.org", "2001:db8::1"))
