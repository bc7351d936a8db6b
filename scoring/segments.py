"""RFM scores and named segments.

Rules (README, "Segments"):
- Each customer gets three scores from 1 to 5 against the customer base the segmenter was fitted on:
  - R: how recently they bought (5 = the most recent fifth of customers);
  - F: how many purchases they made;
  - M: how much they spent in all.
  Edges are the 20/40/60/80th percentiles, and a value equal to an edge takes the lower score. Customers
  tied at the bottom (everyone with a single purchase) therefore share F = 1 rather than being spread over
  several scores by an arbitrary tie-break.
- FM is the rounded mean of F and M. The segment is read from the (R, FM) grid below, the customary
  eleven-segment map.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Rows: R from 5 down to 1; columns: FM from 1 to 5.
SEGMENT_GRID = {
    5: ("New", "Potential loyalists", "Potential loyalists", "Champions", "Champions"),
    4: ("Promising", "Potential loyalists", "Potential loyalists", "Loyal", "Loyal"),
    3: ("About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At risk", "At risk", "Can't lose them"),
    1: ("Lost", "Lost", "At risk", "At risk", "Can't lose them"),
}
SEGMENTS = tuple(dict.fromkeys(name for row in SEGMENT_GRID.values() for name in row))
_QUANTILES = (0.2, 0.4, 0.6, 0.8)


class RfmSegmenter:
    """fit() learns the score edges from a customer base; transform() scores any customers against them."""

    def fit(self, summary: pd.DataFrame) -> RfmSegmenter:
        """``summary``: scoring.features.rfm_summary output (days_since_last, frequency, total)."""
        self.edges_ = {
            "days_since_last": np.quantile(summary["days_since_last"], _QUANTILES),
            "frequency": np.quantile(summary["frequency"], _QUANTILES),
            "total": np.quantile(summary["total"], _QUANTILES),
        }
        return self

    def transform(self, summary: pd.DataFrame) -> pd.DataFrame:
        # side="left": a value equal to an edge belongs to the lower group.
        recent_rank = np.searchsorted(self.edges_["days_since_last"], summary["days_since_last"], side="left")
        r_score = 5 - recent_rank  # fewer days since the last purchase is better
        f_score = 1 + np.searchsorted(self.edges_["frequency"], summary["frequency"], side="left")
        m_score = 1 + np.searchsorted(self.edges_["total"], summary["total"], side="left")
        fm_score = np.floor((f_score + m_score) / 2 + 0.5).astype(int)  # half rounds up, never to even
        segment = [SEGMENT_GRID[r][fm - 1] for r, fm in zip(r_score, fm_score)]
        return pd.DataFrame(
            {"r_score": r_score, "f_score": f_score, "m_score": m_score, "segment": segment}, index=summary.index
        )
