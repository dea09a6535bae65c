"""What the binaries share: bad input ends the program with its message."""

import sys

from l2l_tf import datasets

# The errors the package raises for bad input (a config value, a name, a
# path, unprepared data), before any work starts.
BAD_INPUT = (ValueError, TypeError, FileNotFoundError,
             datasets.NotPreparedError)


# --fused's values, as the `fused` argument takes them.
FUSED = {"auto": None, "on": True, "off": False}


def checked(fn, *args, **kwargs):
    """Returns fn(*args, **kwargs); on bad input, prints the error's message
    (no traceback: it names what was wrong and what was received) and exits
    with status 2."""
    try:
        return fn(*args, **kwargs)
    except BAD_INPUT as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(2)
