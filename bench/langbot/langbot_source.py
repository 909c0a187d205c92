"""LangBot's own code for the benchmarks: its files at a git ref, laid out as
a package in a temporary folder (read from its repository, not copied into
this one), and the bench's database URL for SQLAlchemy's async drivers."""

import os
import subprocess
import tempfile
import urllib.parse


def materialise(git_dir: str, ref: str, real: list, stand_ins: dict) -> str:
    """LangBot's `real` files at `ref`, and `stand_ins` (path: text), in a
    temporary package tree; the folder to put on sys.path."""
    root = tempfile.mkdtemp(prefix="langbot-")
    for path in real:
        text = subprocess.run(
            ["git", "--git-dir", git_dir, "show", f"{ref}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        _write(root, path, text)
    for path, text in stand_ins.items():
        _write(root, path, text)
    return os.path.join(root, "src")


def _write(root: str, path: str, text: str) -> None:
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    # Every folder a package, none running LangBot's own __init__ code.
    folder = os.path.dirname(full)
    while folder.startswith(os.path.join(root, "src", "langbot")):
        init = os.path.join(folder, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
        folder = os.path.dirname(folder)
    with open(full, "w") as f:
        f.write(text)


def sqlalchemy_url(url: str) -> str:
    """The bench's database URL for SQLAlchemy's async drivers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        return f"sqlite+aiosqlite:///{path}"
    scheme = {"postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg",
              "mysql": "mysql+aiomysql", "mariadb": "mysql+aiomysql"}[parts.scheme]
    # Parameters are the Rust drivers' (sslmode, pooler...): left out.
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", ""))
