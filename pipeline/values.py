"""Values written as text, read the same way everywhere: run-config YAML and dotted overrides,
lai-prep flags and source options.

    to_bool("yes"), to_bool(1), to_bool("OFF")     # True, True, False
    to_float("1e-3")                               # 0.001 (YAML 1.1 reads 1e-3 as a string)
    to_int("5e8"), to_int(5.0e8)                   # 500000000 (a whole number, as written)

Each raises ValueError with a short "expected ..., got ..." that callers prefix with the file and
field; none converts silently (to_bool(2), to_float(True), to_float("inf"), to_int(3.5) are
refused).
"""
from __future__ import annotations

import math
from typing import Any

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
BOOL_SPELLINGS = "true/false, yes/no, on/off, 1/0"


def to_bool(value: Any) -> bool:
    """A bool, the ints 1/0, or one of BOOL_SPELLINGS in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"expected a boolean ({BOOL_SPELLINGS}), got {value!r}")


def to_float(value: Any) -> float:
    """A finite float from an int, a float or a numeric string."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(number)


def to_int(value: Any) -> int:
    """An int, or a whole number written as a float or a numeric string ("5e8", 5.0e8,
    "1_000"); nothing with a fractional part, no bool."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = to_float(value)
    except ValueError:
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"expected int, got {value!r}")
    return int(number)
