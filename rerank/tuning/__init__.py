"""Cut-offs from a latency budget (``rerank tune``): stage cost models fitted from traces,
effectiveness of every combination of cut-offs by re-sorting cached scores, and the choice."""
from rerank.tuning.cost_model import (
           CostModel,
           CostModelError,
           Prediction,
           StageCostModel,
           fit_stage_cost,
           measure_costs,
)
from rerank.tuning.grid import GridError, check_grid, combinations
from rerank.tuning.search import GridRow, TuneChoice, TuneError, TuneResult, tune

__all__ = ["CostModel", "CostModelError", "GridError", "GridRow", "Prediction", "StageCostModel", "TuneChoice",
           "TuneError", "TuneResult", "check_grid", "combinations", "fit_stage_cost", "measure_costs", "tune"]
