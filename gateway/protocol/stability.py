"""The ``stability`` extension: what the monitors saw, attached to responses."""

from pydantic import BaseModel, Field


class StabilityReason(BaseModel):
    """A calibrated signal past its threshold."""

    signal: str = Field(description="feature name, e.g. 'late.pr', 'entropy', 'text.repetition'")
    value: float = Field(description="smoothed value when the verdict was taken")
    threshold: float = Field(description="calibrated threshold")
    direction: str = Field(description="'low' or 'high': the abnormal side")
    since_token: int = Field(description="completion token index where the crossing began")


class BandReport(BaseModel):
    """Statistics of one layer band over the completion (window statistics once the window is full)."""

    layers: list[int]
    pr_mean: float | None = None
    pr_min: float | None = None
    pr_raw_mean: float | None = None
    eff_rank_mean: float | None = None
    rank_margin_mean: float | None = None
    rank_margin_min: float | None = None
    cosine_mean: float | None = None
    drift_mean: float | None = None


class StabilityReport(BaseModel):
    """Top-level ``stability`` object of a response (last chunk before ``[DONE]`` when streaming)."""

    verdict: str = Field(description="ok | warn | sink | rank_exhaustion")
    reasons: list[StabilityReason] = Field(default_factory=list)
    onset_token: int | None = Field(None, description="first completion token where any signal crossed")
    last_stable_token: int | None = Field(None, description="last completion token with no signal crossed")
    tokens_monitored: int = 0
    entropy_mean: float | None = None
    repetition_mean: float | None = None
    bands: dict[str, BandReport] = Field(default_factory=dict)
    calibration: str | None = Field(None, description="model and date of the calibration used")
    policy: str = "annotate"
