"""The one exception type for problems with the input data and the params (fat.params.ParamsError
is a DataError).

A :class:`DataError` is the user's to fix, not a bug: its message names the file, the rows (fnames)
and the problem, one problem a line. `fat` commands and the `prepare` stage print it and exit
non-zero without a traceback."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data or params. `problems` holds one line per problem; the message joins them."""

    def __init__(self, *problems: str):
        self.problems = [str(p) for p in problems]
        super().__init__("\n".join(self.problems))


def names(fnames, limit: int = 10) -> str:
    """The first `limit` fnames, quoted, and how many more: "'a.wav', 'b.wav', … (3 more)"."""
    fnames = list(fnames)
    more = f", … ({len(fnames) - limit} more)" if len(fnames) > limit else ""
    return ", ".join(repr(f) for f in fnames[:limit]) + more


def rows(fnames, limit: int = 10) -> str:
    """The count and the first `limit` fnames: "3 rows: 'a.wav', 'b.wav', 'c.wav'"."""
    fnames = list(fnames)
    return f"{len(fnames)} row{'' if len(fnames) == 1 else 's'}: {names(fnames, limit)}"
