"""``python -m servetune.data.collect``: the ``servetune collect`` commands without the rest of the
CLI (for GPU hosts that lack the training/tuning dependencies)."""

import logging
import sys

from servetune import ServetuneError
from servetune.data.collect._command import command


def main() -> int:
    """Run the ``collect`` group; servetune errors exit with their code and a one-line message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        command.main(prog_name="python -m servetune.data.collect", standalone_mode=False)
    except ServetuneError as exc:
        print(f"servetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
