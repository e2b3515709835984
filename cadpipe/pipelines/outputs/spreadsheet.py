"""CSV cells that cannot run as spreadsheet formulas (CSV injection).

A spreadsheet opening a CSV runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some programs, tab
or carriage return) as a formula: a study file named ``=HYPERLINK("http://...").png`` becomes a live link in
``results.csv``. :func:`neutralise_formula` prefixes such text with ``'`` (the usual fix, OWASP "CSV Injection"):
spreadsheets show the text as typed, without the quote. Numbers are left alone (``-0.5`` as a number is not text);
machine-readable outputs (Parquet, JSON) keep the raw value.
"""

from __future__ import annotations

__all__ = ["FORMULA_STARTS", "neutralise_formula", "spreadsheet_safe"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value):
    """``value`` with a leading ``'`` when it is text starting with a formula character; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_safe(df):
    """A copy of the pandas DataFrame ``df`` with :func:`neutralise_formula` applied to its text cells."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = df.copy()
    for col in out.columns:
        if is_object_dtype(out[col]) or is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise_formula)
    return out
