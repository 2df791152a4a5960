"""Runtime configuration: one frozen dataclass, filled flag > environment > default.

Every option has a command-line flag, an environment variable ``PGLOCALAI_*``
and a documented default (``OPTIONS``; docs/runtime.md renders the same
table). Example::

    >>> cfg = ServiceConfig.resolve({"socket": "/tmp/x.sock"}, {"PGLOCALAI_WORKERS": "1"})
    >>> cfg.socket, cfg.workers
    ('/tmp/x.sock', 1)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pglocalai.client import DEFAULT_SOCKET
from pglocalai.errors import InvalidArgument
from pglocalai.service.settings import cpu_count


def default_workers() -> int:
    """Two runs in parallel, one thread each, beat one two-thread run on CPU (docs)."""
    return 2 if cpu_count() >= 2 else 1


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean, not \"{value}\"")


@dataclass(frozen=True)
class Option:
    name: str  # dataclass field; flag is --name-with-dashes; env PGLOCALAI_NAME
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    flag: bool = False  # a switch without a value

    @property
    def env(self) -> str:
        return "PGLOCALAI_" + self.name.upper()

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("socket", str, f"Unix socket path (default {DEFAULT_SOCKET})"),
    Option("socket_owner", str, "user that owns the socket and its directory, e.g. postgres "
           "(default: the runtime's own user)"),
    Option("tcp", str, "also listen on loopback TCP 127.0.0.1:PORT (needs --secret-file; "
           "default: off)"),
    Option("secret_file", str, "file holding the shared secret TCP clients must send"),
    Option("models_dir", str, "model store (default $PGLOCALAI_MODELS, "
           "$PGLOCALAI_HOME/models or ./.run/models)"),
    Option("state_dir", str, "where settings.json is kept (default $PGLOCALAI_HOME or ./.run)"),
    Option("preload", str, "models loaded at start: all, none or URI,URI (default none: "
           "each model loads on its first request)"),
    Option("variant", str, "model variant to run: int8, int8-smooth, fp32 or bf16 (OpenVINO; "
           "default: the model's default_variant)"),
    Option("max_batch_tokens", int, "padded tokens per batch: size x longest text "
           "(default 512: larger batches run slower per token on CPU)"),
    Option("max_batch_size", int, "texts per batch (default 64)"),
    Option("batch_wait_ms", float, "how long an idle worker waits for requests already "
           "arriving before it runs a lone one (default 1)"),
    Option("max_queue", int, "texts queued per model before requests fail with overloaded "
           "(default 16384)"),
    Option("workers", int, "model runs in parallel; each gets intra_op_parallelism / workers "
           "threads (default 2, 1 on a single CPU)"),
    Option("wide_runs", _bool, "on: a batch taken while no other run is in flight or waiting "
           "runs with all intra_op_parallelism threads (one more session), a short one only "
           "while one request at a time is open and other processes leave the cores free; "
           "off: always the worker's share (default on)"),
    Option("log_file", str, "append logs here (default stderr)"),
    Option("log_format", str, "log line format (default json)", choices=("json", "text")),
    Option("log_level", str, "debug logs every request (default info)",
           choices=("debug", "info", "warning", "error")),
    Option("daemon", _bool, "detach into the background once listening", flag=True),
    Option("pidfile", str, "write the process id here (with --daemon or --supervise)"),
    Option("supervise", _bool, "a parent process restarts the runtime when it dies",
           flag=True),
    Option("tokenizer", str, "compact: Unigram vocabularies in a Python dict (same ids, "
           "~200 MB less memory for multilingual-e5-small), or huggingface: tokenizers' own "
           "model (default compact; other vocabularies always use tokenizers)",
           choices=("compact", "huggingface")),
)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    socket: str = DEFAULT_SOCKET
    socket_owner: str | None = None
    tcp: str | None = None
    secret_file: str | None = None
    models_dir: str | None = None
    state_dir: str = ""
    preload: str = "none"
    variant: str | None = None
    max_batch_tokens: int = 512
    max_batch_size: int = 64
    batch_wait_ms: float = 1.0
    max_queue: int = 16384
    workers: int = 2
    wide_runs: bool = True
    log_file: str | None = None
    log_format: str = "json"
    log_level: str = "info"
    daemon: bool = False
    pidfile: str | None = None
    supervise: bool = False
    tokenizer: str = "compact"

    @classmethod
    def resolve(cls, flags: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> ServiceConfig:
        """Flags (None = not given) over ``PGLOCALAI_*`` variables over defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            given = flags.get(opt.name)
            if given is not None and not (opt.flag and given is False):
                values[opt.name] = given
            elif env.get(opt.env) not in (None, ""):
                try:
                    values[opt.name] = opt.parse(env[opt.env])
                except ValueError as exc:
                    raise InvalidArgument(f"invalid value for {opt.env}", detail=str(exc)) \
                        from None
        if "workers" not in values:
            values["workers"] = default_workers()
        if "state_dir" not in values:
            values["state_dir"] = env.get("PGLOCALAI_HOME") or str(Path(".run"))
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue", "workers"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise InvalidArgument("batch_wait_ms must not be negative")
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if opt.choices and value not in opt.choices:
                raise InvalidArgument(f"{opt.name} must be one of {', '.join(opt.choices)}, "
                                      f"not \"{value}\"")
        if self.tcp is not None:
            self.tcp_address()
            if not self.secret_file:
                raise InvalidArgument("--tcp needs --secret-file",
                                      hint="TCP clients must authenticate with a shared secret")

    def tcp_address(self) -> tuple[str, int]:
        """(host, port) of ``--tcp``; refuses any address that is not loopback."""
        assert self.tcp is not None
        host, sep, port = self.tcp.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if host == "localhost":
            host = "127.0.0.1"
        try:
            if not sep:
                raise ValueError("missing port")
            addr = ipaddress.ip_address(host)
            number = int(port)
            if not 0 <= number <= 65535:
                raise ValueError("port out of range")
        except ValueError as exc:
            raise InvalidArgument(f"invalid --tcp address \"{self.tcp}\"", detail=str(exc),
                                  hint="use 127.0.0.1:PORT") from None
        if not addr.is_loopback:
            raise InvalidArgument(f"refusing to listen on non-loopback address {host}",
                                  hint="the runtime listens on loopback only: use 127.0.0.1:PORT")
        return str(addr), number

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
