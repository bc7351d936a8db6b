"""The owner report's views as HTML with plotly charts: one self-contained file (`retention report`), or one page per
view in the dashboard (sync/ui.py). Only draws ``ReportFigures`` (sync/report.py); reads nothing itself.

Numbers a reader may check carry ``data-figure`` attributes, so the tests can compare the page with the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
import plotly.io as pio
from plotly.offline import get_plotlyjs

from sync.report import BANDS, SHOWN_AT_RISK, ReportFigures
from sync.score_history import HISTOGRAM_BINS, NOT_SCORED

BAND_COLOURS = {"high": "#c0392b", "medium": "#e67e22", "low": "#27ae60", "new": "#7f8c8d"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def plot(figure: go.Figure, div_id: str, height: int = 360) -> str:
    figure.update_layout(height=height, margin={"l": 50, "r": 20, "t": 40, "b": 40}, template="plotly_white")
    return pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG, default_height=height)


def figure_cell(name: str, value: object, label: str) -> str:
    shown = f"{value:,}" if isinstance(value, int) else escape(str(value))
    return f'<div class="tile"><div class="value" data-figure="{escape(name)}">{shown}</div><div class="label">{escape(label)}</div></div>'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], table_id: str, sortable: bool = False) -> str:
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class RawHtml(str):
    """A cell that is already HTML (a form the dashboard built); never customer text."""


@dataclass(frozen=True)
class Sortable:
    """A cell shown as ``shown`` and sorted by ``key`` (a percentage, an amount)."""

    key: float
    shown: str


def _cell(value: object) -> str:
    if isinstance(value, RawHtml):
        return f"<td>{value}</td>"
    if isinstance(value, Sortable):
        return f'<td data-sort="{value.key}">{escape(value.shown)}</td>'
    if isinstance(value, float) and math.isnan(value):
        return '<td data-sort="0">-</td>'
    if isinstance(value, float):  # sortable by its number, shown rounded
        return f'<td data-sort="{value}">{value:,.3f}</td>'
    if isinstance(value, int):
        return f'<td data-sort="{value}">{value:,}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


# --- the views ------------------------------------------------------------------------------------------------


def overview_view(figures: ReportFigures) -> str:
    at_risk_value = sum(c.clv or 0.0 for c in figures.at_risk)
    currency = next((c.currency for c in figures.at_risk if c.currency), "")
    tiles = [figure_cell("scored", figures.scored, "customers scored")]
    tiles += [figure_cell(f"band-{band}", figures.bands[band], f"{band} risk") for band in BANDS]
    tiles.append(figure_cell("at-risk-value", f"{at_risk_value:,.0f} {currency}".strip(), "12-month value of the high-risk customers"))
    tiles.append(figure_cell("quarantine-total", figures.quarantine_total, "records refused (quarantine)"))
    as_of = f"{figures.scored_at:%Y-%m-%d %H:%M} UTC" if figures.scored_at else "never"
    bands = go.Figure(go.Pie(labels=list(BANDS), values=[figures.bands[b] for b in BANDS], hole=0.5, sort=False,
                             marker={"colors": [BAND_COLOURS[b] for b in BANDS]}))
    bands.update_layout(title="Customers by churn risk")
    return (f'<p class="note">Scores as of {escape(as_of)}; store {escape(figures.store_label)}; '
            f'generated {figures.generated_at:%Y-%m-%d %H:%M} UTC.</p><div class="tiles">{"".join(tiles)}</div>'
            + plot(bands, "band-shares", height=320))


def risk_view(figures: ReportFigures) -> str:
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    counts = np.histogram(figures.probabilities, bins=edges)[0]
    slices = [f"{a:.0%}-{b:.0%}" for a, b in zip(edges[:-1], edges[1:])]
    histogram = go.Figure(go.Bar(x=slices, y=counts, name="now", marker_color="#34495e"))
    if len(figures.score_runs) >= 2:  # the run before the latest, as kept in the store's history
        before = figures.score_runs[-2]
        histogram.add_trace(go.Scatter(x=slices, y=before.probability_histogram, mode="lines+markers", line={"color": "#e67e22"},
                                       name=f"run #{before.run_id} ({before.scored_at:%Y-%m-%d})"))
    histogram.update_layout(title="Churn probability (customers per 5 points)", xaxis_title="chance of churning", yaxis_title="customers")
    parts = [plot(histogram, "risk-histogram")]
    runs = figures.score_runs
    if runs:
        moved = go.Figure([go.Bar(name=band, x=[f"#{r.run_id} {r.scored_at:%m-%d}" for r in runs], y=[r.bands.get(band, 0) for r in runs],
                                  marker_color=BAND_COLOURS[band]) for band in BANDS])
        moved.update_layout(barmode="stack", title="Risk bands per scoring run", yaxis_title="customers")
        parts.append(plot(moved, "risk-by-run"))
        latest = runs[-1]
        flows = sorted(((b, a, n) for (b, a), n in latest.band_flows.items()), key=lambda f: -f[2])
        parts.append(f"<h3>How customers moved between bands in run #{latest.run_id}</h3>"
                     + table(("band before", "band now", "customers"), flows, "band-flows"))
    else:
        parts.append('<p class="note">No scoring run is recorded yet: the movement between runs starts with the next one.</p>')
    return "".join(parts)


def at_risk_view(figures: ReportFigures, shown: int = SHOWN_AT_RISK) -> str:
    rows = [(c.customer, Sortable(c.churn_probability, f"{c.churn_probability:.1%}"), c.segment,
             Sortable(-1.0, "") if c.clv is None else Sortable(c.clv, f"{c.clv:,.2f}"), c.currency or "", c.reasons)
            for c in figures.at_risk[:shown]]
    more = (f" The {shown:,} riskiest are shown; `retention report --csv FILE` writes all {len(figures.at_risk):,}."
            if len(figures.at_risk) > shown else "")
    return (f'<p class="note"><span data-figure="at-risk-count">{len(figures.at_risk):,}</span> customers are at high risk, '
            f"riskiest first; click a column to sort.{more}</p>"
            + table(("customer", "churn probability", "segment", "12-month value", "currency", "why"), rows, "at-risk", sortable=True))


def segments_view(figures: ReportFigures) -> str:
    names = sorted(figures.segments, key=lambda name: -figures.segments[name])
    sizes = go.Figure(go.Bar(x=names, y=[figures.segments[n] for n in names], marker_color="#2980b9"))
    sizes.update_layout(title="Customers per segment now", yaxis_title="customers")
    parts = [plot(sizes, "segment-sizes"), table(("segment", "customers"), [(n, figures.segments[n]) for n in names], "segment-counts")]
    if figures.score_runs:
        latest = figures.score_runs[-1]
        left = sorted({b for b, _ in latest.segment_flows})
        right = sorted({a for _, a in latest.segment_flows})
        nodes = [f"{name} (before)" for name in left] + [f"{name} (now)" for name in right]
        links = [(left.index(b), len(left) + right.index(a), n) for (b, a), n in latest.segment_flows.items()]
        # One colour per segment on both sides, so a segment's customers can be followed across.
        palette = qualitative.Plotly + qualitative.Safe
        colour = {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(left) | set(right)))}
        sankey = go.Figure(go.Sankey(node={"label": nodes, "pad": 12, "color": [colour[n] for n in left] + [colour[n] for n in right]},
                                     link={"source": [l[0] for l in links], "target": [l[1] for l in links], "value": [l[2] for l in links]}))
        first = all(b == NOT_SCORED for b, _ in latest.segment_flows)
        sankey.update_layout(title=f"Segment flows into run #{latest.run_id}" + (" (the first run: everyone is new)" if first else ""))
        moved = sum(n for (b, a), n in latest.segment_flows.items() if b != a and NOT_SCORED not in (b, a))
        parts.append(f'<p class="note"><span data-figure="segment-moves">{moved:,}</span> customers changed segment in run '
                     f"#{latest.run_id} (customers scored for the first time not counted).</p>" + plot(sankey, "segment-flows", height=480))
    return "".join(parts)


def sentiment_view(figures: ReportFigures) -> str:
    survey = figures.survey
    if survey is None:
        return '<p class="note">No survey answers in the store yet.</p>'
    months = [m.month for m in survey.months]
    trend = go.Figure([
        go.Scatter(x=months, y=[m.nps for m in survey.months], name="NPS (-100..100)", mode="lines+markers"),
        go.Scatter(x=months, y=[None if m.mean_sentiment is None else m.mean_sentiment * 100 for m in survey.months],
                   name="mean sentiment x100", mode="lines+markers", yaxis="y2"),
    ])
    trend.update_layout(title="NPS and sentiment per month", yaxis={"title": "NPS"},
                        yaxis2={"title": "sentiment x100", "overlaying": "y", "side": "right"})
    parts = [plot(trend, "nps-trend"),
             table(("month", "answers", "with NPS", "NPS", "free-text answers", "mean sentiment"),
                   [(m.month, m.answers, m.nps_answers, "" if m.nps is None else Sortable(m.nps, f"{m.nps:+.1f}"), m.texts,
                     "" if m.mean_sentiment is None else m.mean_sentiment) for m in survey.months], "survey-months")]
    if survey.negative_themes:
        themes = go.Figure(go.Bar(x=[n for _, n in survey.negative_themes][::-1], y=[t for t, _ in survey.negative_themes][::-1],
                                  orientation="h", marker_color="#c0392b"))
        themes.update_layout(title="Most frequent themes in negative answers", xaxis_title="negative answers mentioning it")
        parts.append(plot(themes, "negative-themes"))
    if survey.quotes:
        parts.append("<h3>Examples of negative answers</h3><ul class=\"quotes\">"
                     + "".join(f"<li><q>{escape(text)}</q> <span class=\"note\">{day}, sentiment {score:+.2f}</span></li>"
                               for day, text, score in survey.quotes) + "</ul>")
    return "".join(parts)


def model_view(figures: ReportFigures) -> str:
    quality = figures.model
    if quality is None:
        return f'<p class="note">{escape(figures.model_note)}</p>'
    predicted, observed, sizes = zip(*quality.calibration) if quality.calibration else ((), (), ())
    calibration = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], name="perfectly calibrated", mode="lines", line={"dash": "dot", "color": "#95a5a6"}),
        go.Scatter(x=predicted, y=observed, name="model", mode="lines+markers", text=[f"{n:,} customers" for n in sizes]),
    ])
    calibration.update_layout(title="Calibration: predicted vs observed churn", xaxis_title="predicted", yaxis_title="observed")
    lift = go.Figure(go.Bar(x=[f"{i * 10}-{i * 10 + 10}%" for i in range(len(quality.lift_by_decile))], y=quality.lift_by_decile,
                            marker_color="#8e44ad"))
    lift.update_layout(title="Lift per tenth of customers, riskiest first", yaxis_title="churn rate / average")
    metrics = [(method, *(values.get(k, float("nan")) for k in ("roc_auc", "pr_auc", "brier", "ece", "lift")))
               for method, values in quality.metrics.items()]
    sample = (f" A random {quality.customers:,} of the {quality.sampled_from:,} customers with orders were scored."
              if quality.sampled_from > quality.customers else "")
    return (f'<p class="note">Backtest: scored as of {escape(quality.scored_at)} and compared with what happened in the '
            f"{quality.horizon_days} days since; model: {escape(quality.method)}.{sample}</p>"
            + plot(calibration, "calibration") + plot(lift, "lift")
            + table(("method", "ROC-AUC", "PR-AUC", "Brier", "calibration error", "top-10% lift"), metrics, "model-metrics"))


def sync_view(figures: ReportFigures) -> str:
    runs = list(reversed(figures.runs))
    totals = [sum(c["written"] for c in run["counts"].values()) for run in runs]
    written = go.Figure(go.Bar(x=[f"#{r['id']} {r['command']} {r['detail'][:24]}" for r in runs], y=totals, marker_color="#16a085"))
    written.update_layout(title="Records and values written per run", yaxis_title="written")
    run_rows = [(r["id"], f"{r['started_at']:%Y-%m-%d %H:%M}", r["command"], r["detail"], r["status"],
                 sum(c["read"] for c in r["counts"].values()), sum(c["written"] for c in r["counts"].values()),
                 sum(c["quarantined"] for c in r["counts"].values())) for r in figures.runs]
    return (plot(written, "writes-per-run") + "<h3>Last runs</h3>"
            + table(("run", "started (UTC)", "command", "what", "status", "read", "written", "quarantined"), run_rows, "runs")
            + quarantine_section(figures))


def quarantine_section(figures: ReportFigures, retry_form: Callable[[dict[str, Any]], str] | None = None) -> str:
    """The refused records with their reasons; the dashboard adds a retry column (``retry_form``)."""
    parts = [f'<h3>Quarantine: <span data-figure="quarantine-rows">{figures.quarantine_total:,}</span> refused records</h3>']
    if figures.quarantine_reasons:
        reasons = go.Figure(go.Bar(x=[n for _, n in figures.quarantine_reasons], y=[r[:60] for r, _ in figures.quarantine_reasons],
                                   orientation="h", marker_color="#c0392b"))
        reasons.update_layout(title="Why records were refused")
        parts.append(plot(reasons, "quarantine-reasons"))
    header = ("id", "source", "type", "where", "reason", "last seen (UTC)") + (("",) if retry_form else ())
    rows = [(q["id"], q["source"], q["kind"], q["record_ref"], q["reason"], f"{q['last_seen_at']:%Y-%m-%d %H:%M}")
            + ((RawHtml(retry_form(q)),) if retry_form else ()) for q in figures.quarantine]
    shown = "" if figures.quarantine_total <= len(rows) else f'<p class="note">The {len(rows):,} most recent are listed; `retention quarantine --export FILE` writes all.</p>'
    parts.append(shown + table(header, rows, "quarantine") if rows else '<p class="note">Nothing was refused.</p>')
    return "".join(parts)


VIEWS: dict[str, tuple[str, Callable[[ReportFigures], str]]] = {
    "overview": ("Overview", overview_view),
    "risk": ("Churn risk", risk_view),
    "at-risk": ("At-risk customers", at_risk_view),
    "segments": ("Segments", segments_view),
    "sentiment": ("NPS and sentiment", sentiment_view),
    "model": ("Model quality", model_view),
    "sync": ("Sync health", sync_view),
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:1.6em} h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:2em}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:120px}
.tile .value{font-size:1.5em;font-weight:600}.tile .label,.note{color:#666;font-size:.9em}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:8px 0}th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
table.sortable th{cursor:pointer;background:#f7f7f7}nav a{margin-right:14px}q{font-style:italic}
"""

# Sorting a table by a clicked column: numbers by their data-sort value, text alphabetically; a second click reverses.
SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){t.querySelectorAll('th').forEach(function(th,i){
 th.addEventListener('click',function(){var b=t.tBodies[0],r=Array.from(b.rows),d=th.dataset.dir==='asc'?-1:1;th.dataset.dir=d===1?'asc':'desc';
 r.sort(function(x,y){var p=x.cells[i],q=y.cells[i],a=p.dataset.sort,c=q.dataset.sort;
  if(a!==undefined&&c!==undefined){return d*(parseFloat(a)-parseFloat(c));}return d*p.textContent.localeCompare(q.textContent);});
 r.forEach(function(row){b.appendChild(row);});});});});
"""


def page(title: str, body: str, plotly_script: str, nav: str = "") -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"><style>{STYLE}</style>{plotly_script}</head>'
            f"<body>{nav}<h1>{escape(title)}</h1>{body}<script>{SORT_SCRIPT}</script></body></html>")


def render_report(figures: ReportFigures) -> str:
    """The whole report as one HTML file: plotly.js embedded once, so it opens offline (from an email, say)."""
    sections = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{view(figures)}</section>' for key, (title, view) in VIEWS.items())
    return page("Customer retention report", sections, f"<script>{get_plotlyjs()}</script>")
