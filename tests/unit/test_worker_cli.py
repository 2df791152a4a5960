"""``pglocalai worker``'s options that run it in the background or over a whole cluster:
refused combinations fail before anything starts (no database, no runtime, no fork)."""

from __future__ import annotations

import pytest

from pglocalai.cli.main import main


@pytest.mark.parametrize(("argv", "message"), [
    (["--daemon"], "--daemon needs --log-file"),
    (["--all-databases", "--once"], "--all-databases cannot be combined with --once"),
    (["--all-databases", "--vectorizer", "3"], "--all-databases cannot be combined"),
    (["--all-databases", "--scan-interval", "0"], "--scan-interval must be positive, not 0.0"),
])
def test_refused_before_starting(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", *argv]) == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_the_options_reach_the_parser() -> None:
    from pglocalai.cli.main import build_parser

    args = build_parser().parse_args(["worker", "--all-databases", "--daemon", "--supervise",
                                      "--pidfile", "/tmp/w.pid", "--log-file", "/tmp/w.log"])
    assert args.all_databases and args.daemon and args.supervise
    assert (args.pidfile, args.log_file, args.scan_interval) == ("/tmp/w.pid", "/tmp/w.log", 10.0)
