"""Plates as people look at them: a read as a rows × columns frame, and as an HTML heatmap
(wells coloured by value; hovering a well shows its sample, group and value) for notebooks."""

from __future__ import annotations

import math
import re

import pandas as pd

# Viridis at five stops: dark for low values, yellow for high.
_STOPS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
_WELL = re.compile(r"^([A-Za-z]+)(\d+)$")


def _split(well: str) -> tuple[str, int]:
    m = _WELL.match(well)
    if not m:
        raise ValueError(f"well {well!r} is not a row letter and a column number")
    return m.group(1).upper(), int(m.group(2))


def _row_key(row: str) -> tuple[int, str]:
    return (len(row), row)  # A … Z, then AA, AB … (1536-well plates)


def _one_read(results: pd.DataFrame, read: int | str, wavelength: float | None) -> pd.DataFrame:
    ids = list(dict.fromkeys(results["result"]))
    if isinstance(read, int):
        if not 0 <= read < len(ids):
            raise IndexError(f"read {read}: the run has {len(ids)} read(s)")
        rid = ids[read]
    elif read in ids:
        rid = read
    else:
        raise KeyError(f"no read {read!r} in this run; its reads are {ids}")
    rows = results[results["result"] == rid]
    wavelengths = [w for w in dict.fromkeys(rows["wavelength_nm"]) if w is not None and not pd.isna(w)]
    if wavelength is not None:
        if wavelength not in wavelengths:
            raise KeyError(f"read {rid} has no {wavelength} nm; it has {wavelengths}")
        rows = rows[rows["wavelength_nm"] == wavelength]
    elif len(wavelengths) > 1:
        rows = rows[rows["wavelength_nm"] == wavelengths[0]]
    return rows


def plate_frame(results: pd.DataFrame, read: int | str = 0, wavelength: float | None = None) -> pd.DataFrame:
    """One read of `Run.results()` as rows (A, B, …) by columns (1, 2, …) of values; wells the
    read did not measure are NaN."""
    rows = _one_read(results, read, wavelength)
    cells = {_split(w): v for w, v in zip(rows["well"], rows["value"])}
    if not cells:
        return pd.DataFrame()
    letters = sorted({r for r, _ in cells}, key=_row_key)
    last = max(c for _, c in cells)
    # A read of a few wells still shows the whole plate's shape up to its last row and column.
    letters = [chr(ord("A") + i) for i in range(ord(letters[-1][0]) - ord("A") + 1)] if all(len(r) == 1 for r in letters) else letters
    columns = list(range(1, last + 1))
    data = [[cells.get((r, c), math.nan) for c in columns] for r in letters]
    return pd.DataFrame(data, index=pd.Index(letters, name="row"), columns=pd.Index(columns, name="column"))


def _colour(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(t), len(_STOPS) - 2)
    f = t - i
    r, g, b = (round(a + (b - a) * f) for a, b in zip(_STOPS[i], _STOPS[i + 1]))
    return f"rgb({r},{g},{b})"


def _esc(s: object) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def plate_html(results: pd.DataFrame, read: int | str, title: str = "") -> str:
    """An HTML table of one read: each well coloured by its value (viridis, low to high across
    the read), its value printed, and a tooltip with the well, sample, group and value."""
    rows = _one_read(results, read, None)
    frame = plate_frame(results, read)
    values = [v for v in rows["value"] if not pd.isna(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = (hi - lo) or 1.0
    about = {w: r for w, r in zip(rows["well"], rows.itertuples(index=False))}
    unit = rows["unit"].iloc[0] if len(rows) else ""
    out = [f'<table class="labwright-plate" style="border-collapse:collapse;font:11px sans-serif">']
    if title:
        out.append(f'<caption style="text-align:left">{_esc(title)} ({_esc(unit)}, {lo:.4g}–{hi:.4g})</caption>')
    out.append("<tr><th></th>" + "".join(f"<th>{c}</th>" for c in frame.columns) + "</tr>")
    for letter, line in frame.iterrows():
        cells = [f"<th>{letter}</th>"]
        for column, v in line.items():
            well = f"{letter}{column}"
            if pd.isna(v):
                cells.append('<td style="background:#eee;width:34px;height:22px"></td>')
                continue
            r = about.get(well)
            tip = [well]
            if r is not None and r.sample:
                tip.append(f"sample {r.sample}")
            if r is not None and r.group:
                tip.append(f"group {r.group}")
            tip.append(f"{v:.4g} {unit}")
            t = (v - lo) / span
            ink = "#000" if t > 0.6 else "#fff"
            cells.append(
                f'<td title="{_esc(" · ".join(tip))}" data-well="{well}" data-value="{v}" '
                f'style="background:{_colour(t)};color:{ink};width:34px;height:22px;text-align:center">{v:.3g}</td>'
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
