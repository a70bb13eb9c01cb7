"""A column of names as small integer codes into its distinct names (dictionary encoding).

The bulk path carries each call's source, target and method this way from the driver to
the coordinator, the shards and the hosts: a batch of 20,000 calls among 1,000 agents
travels as 1,000 names and 20,000 int32 codes, not 20,000 strings that every hop packs,
unpacks and looks up again. Each hop works on the codes with numpy (a shard registers the
distinct names once and maps the codes to its own dense agent indices); names come back
only where a handler needs them.

>>> sources = CodedNames.encode("sources", ["alice", "bob", "alice"])
>>> sources.names, sources.codes.tolist()
(['alice', 'bob'], [0, 1, 0])
>>> sources.take(np.array([2, 0])).decoded()
['alice', 'alice']
>>> CodedNames.encode("sources", ["alice", ""])
Traceback (most recent call last):
...
mesh.core.errors.InvalidIdError: sources[1]='': must be 1 to 256 characters, not 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from mesh.columnar._checks import describe
from mesh.core.errors import InvalidArgumentError, InvalidColumnError, InvalidTypeError
from mesh.core.ids import check_id, is_id


@dataclass(frozen=True)
class CodedNames:
    """``names[codes[i]]`` is the i-th value; ``names`` are distinct, ``codes`` an int32 array."""

    names: list[str]
    codes: np.ndarray  # int32, each in range(len(names))

    def __post_init__(self) -> None:
        codes = self.codes
        if not isinstance(codes, np.ndarray) or codes.dtype != np.int32 or codes.ndim != 1:
            raise InvalidColumnError("codes", describe(codes), "a 1-D int32 numpy array")
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(self.names)):
            bad = int(codes.min()) if int(codes.min()) < 0 else int(codes.max())
            raise InvalidArgumentError("codes", bad, f"is not the code of one of the {len(self.names)} names")

    @staticmethod
    def encode(field: str, values: Sequence[str], *, first_index: int = 0) -> CodedNames:
        """``values`` (ids: :mod:`mesh.core.ids`) encoded in order of first appearance; a bad one is named
        as ``field[first_index + its index]``. Costs a type check and a hash per value in C (pyarrow),
        and one id check per distinct name."""
        if not isinstance(values, (list, tuple)):
            raise InvalidColumnError(field, describe(values), "a list or tuple of ids (str)")
        if set(map(type, values)) - {str}:  # Arrow would take bytes (or a str subclass) as text
            _refuse(field, values, first_index)
        try:
            encoded = pa.array(values, pa.string()).dictionary_encode()
        except (pa.ArrowException, ValueError):  # a lone surrogate, which UTF-8 cannot hold
            _refuse(field, values, first_index)
        names = encoded.dictionary.to_pylist()
        if not all(map(is_id, names)):
            for name in names:
                if not is_id(name):
                    check_id(f"{field}[{first_index + list(values).index(name)}]", name)
        return CodedNames(names, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False))

    @staticmethod
    def repeated(name: str, count: int) -> CodedNames:
        """One name ``count`` times (a checked id)."""
        return CodedNames([name], np.zeros(count, np.int32))

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, at: np.ndarray | slice) -> CodedNames:
        """The values at ``at`` (indices or a slice), with the same names."""
        return CodedNames(self.names, np.ascontiguousarray(self.codes[at]))

    def decoded(self) -> list[str]:
        """The values as a list of str."""
        names = self.names
        return [names[code] for code in self.codes.tolist()]

    def of_names(self, lookup: Any, dtype: Any) -> np.ndarray:
        """``lookup(name)`` for each value, called once per distinct name: a numpy array of ``dtype``."""
        per_name = np.fromiter(map(lookup, self.names), dtype, len(self.names))
        return per_name[self.codes]


def _refuse(field: str, values: Sequence[Any], first_index: int) -> None:
    """Raise the error that names the first value of ``values`` that is not an id."""
    for index, value in enumerate(values):
        if type(value) is not str:
            raise InvalidTypeError(f"{field}[{first_index + index}]", value, "a str")
        check_id(f"{field}[{first_index + index}]", value)
    raise InvalidColumnError(field, "a list", "a list of ids (str)")
