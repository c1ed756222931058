"""Running on a real board over ssh, with the system OpenSSH client.

Key authentication only (BatchMode: a password prompt is an error, and none is ever
stored). Every local command is an argv list; the remote command line is built from argv
lists with each word quoted (shlex.quote), since sshd hands it to the login shell. Files go
over scp into a fresh `mktemp -d` folder on the board, removed afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
import shlex
import subprocess

from moa_edge.errors import MoaEdgeError

TIMEOUT_S = 600  # a runner's (here or over ssh) and a remote command's time limit unless --timeout gives one


@dataclass(frozen=True)
class SshTarget:
    destination: str           # user@host, or host
    port: int | None = None
    config: str | None = None  # an ssh_config file (-F), e.g. with IdentityFile and UserKnownHostsFile

    @staticmethod
    def parse(text: str, config: str | None = None) -> "SshTarget":
        """user@host[:port]; IPv6 literals in brackets: user@[::1]:2222."""
        m = re.fullmatch(r"(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?",
                         text)
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise MoaEdgeError(f"--ssh {text!r}: expected user@host[:port]")
        host = m["host"].strip("[]")
        return SshTarget(f"{m['user']}@{host}" if m["user"] else host, int(m["port"]) if m["port"] else None, config)

    def _options(self, port_flag: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
        if self.config:
            options += ["-F", self.config]
        if self.port:
            options += [port_flag, str(self.port)]
        return options

    def _host(self) -> str:
        return f"[{self.destination}]" if ":" in self.destination.split("@")[-1] else self.destination

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
            timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
        """argv on the board (in cwd, with env added), quoted word by word."""
        cmd = self.command(argv, env, cwd)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
        except FileNotFoundError:
            raise MoaEdgeError("ssh: the OpenSSH client is not installed (Debian: openssh-client)") from None
        except subprocess.TimeoutExpired:  # ssh is killed; the board's sshd ends the session
            raise MoaEdgeError(f"over ssh {self.destination}: {argv[0] if argv else 'the command'} did not finish "
                               f"within the time limit of {timeout:g} s (--timeout SECONDS); it was stopped") from None

    def command(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
        """The local ssh command that runs argv on the board (in cwd, with env added), quoted word by word."""
        words = [shlex.quote(w) for w in argv]
        if env:
            words = ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), *words]
        line = " ".join(words) if cwd is None else f"cd {shlex.quote(cwd)} && " + " ".join(words)
        return ["ssh", *self._options("-p"), self.destination, line]

    def check(self, argv: list[str], what: str, **kw) -> str:
        proc = self.run(argv, **kw)
        if proc.returncode != 0:
            raise MoaEdgeError(f"ssh {self.destination}: {what} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def copy(self, sources: list[Path], destination: str, upload: bool = True) -> None:
        """scp local files to a remote folder, or (upload=False) remote files to a local folder."""
        remote = lambda path: f"{self._host()}:{path}"  # noqa: E731
        # Local paths absolute: scp would take a relative "a:b/f" for a host, and "-oX=..." for an option.
        args = ([*(str(Path(s).absolute()) for s in sources), remote(destination)] if upload
                else [*(remote(s) for s in sources), str(Path(destination).absolute())])
        cmd = ["scp", "-q", *self._options("-P"), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S)
        except FileNotFoundError:
            raise MoaEdgeError("scp: the OpenSSH client is not installed (Debian: openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise MoaEdgeError(f"scp {'to' if upload else 'from'} {self.destination} did not finish within "
                               f"{TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise MoaEdgeError(f"scp {'to' if upload else 'from'} {self.destination} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()}")


class RemoteFolder:
    """A fresh folder on the board for one run (`with RemoteFolder(target) as folder:`)."""

    def __init__(self, target: SshTarget):
        self.target = target
        self.path = ""

    def __enter__(self) -> str:
        self.path = self.target.check(["mktemp", "-d", "/tmp/moa-edge-XXXXXX"], "mktemp").strip()
        if not self.path.startswith("/tmp/moa-edge-"):
            raise MoaEdgeError(f"ssh {self.target.destination}: mktemp gave {self.path!r}")
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path:
            self.target.run(["rm", "-rf", self.path])
