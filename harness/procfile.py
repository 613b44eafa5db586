"""The service's processes as the Procfile names them, so that tests and benchmarks start what
`make run` (honcho) starts: each line read, its ${VARIABLE}s filled in as a shell would."""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"

# $NAME, ${NAME}, ${NAME-word}, ${NAME:-word}, ${NAME?message}, ${NAME:?message}
_VARIABLE = re.compile(
    r"\$(?:(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<colon>:?)(?P<op>[-?])(?P<word>[^}]*))?\})"
)
# What only a shell could run: the harness starts each command itself, without one.
_SHELL_SYNTAX = re.compile(r"`|\$\(|[|;&<>]")


class ProcfileError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    """One line of the Procfile: `name: command`."""

    name: str
    line: str

    @property
    def role(self) -> str:
        """web, worker, beat or other: what the harness starts it as."""
        words = shlex.split(self.line)
        program = Path(words[0]).name if words else ""
        if program == "celery" and "worker" in words:
            return "worker"
        if program == "celery" and "beat" in words:
            return "beat"
        return "web" if self.name == "web" else "other"

    def command(self, env: dict[str, str]) -> list[str]:
        """The line's words with its variables filled in from `env`."""
        return shlex.split(expand(self.line, env, where=f"the Procfile's {self.name} line"))


def expand(text: str, env: dict[str, str], *, where: str = "") -> str:
    """Fill in $NAME and ${NAME...} as sh does for the forms a Procfile uses; a `${NAME?...}`
    whose variable is unset (or empty, with the colon) raises ProcfileError."""

    def value(match: re.Match) -> str:
        name = match.group("bare") or match.group("name")
        if "${" in (match.group("word") or ""):
            raise ProcfileError(f"{where}: ${{...}} inside ${{{name}...}} is not supported")
        current = env.get(name)
        op = match.group("op")
        if op is None:
            return current or ""
        missing = current is None or (match.group("colon") == ":" and current == "")
        if not missing:
            return current
        if op == "-":
            return expand(match.group("word"), env, where=where)
        raise ProcfileError(f"{where}: {name} is not set ({match.group('word') or 'required'})")

    return _VARIABLE.sub(value, text)


def read_procfile(path: Path = PROCFILE) -> dict[str, Entry]:
    """The Procfile's entries by name, in the file's order."""
    entries: dict[str, Entry] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()):
            raise ProcfileError(f"{path}:{number}: not `name: command`: {raw!r}")
        command = command.strip()
        if _SHELL_SYNTAX.search(command):
            raise ProcfileError(
                f"{path}:{number}: the harness runs Procfile commands without a shell, so pipes,"
                f" redirections, `;`, `&` and command substitution can't be used: {raw!r}"
            )
        entries[name.strip()] = Entry(name.strip(), command)
    return entries
