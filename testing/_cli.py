"""The ``servetune`` command of this environment, for tests and benchmarks that run the real CLI."""

from __future__ import annotations

import sys
from pathlib import Path


def servetune_command() -> list[str]:
    """The installed ``servetune`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("servetune")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from servetune.cli import main; sys.exit(main())"]
