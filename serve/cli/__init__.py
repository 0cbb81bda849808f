"""The `loraloop` command line: the only code that reaches across serve, adapters and trainer."""

from .main import app

__all__ = ["app"]
