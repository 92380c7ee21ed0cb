"""After the engine: site draws to named parameters (``outputs``, linear and non-linear), summaries and
InferenceData (``summary``), the verdicts (``diagnostics``), fitted curves (``curves``), the per-row
log_likelihood and posterior_predictive groups (``pointwise``) and the predictive check's picture (``ppc``)."""
from hbm.results.summary import Outputs, OutputVar, summarize, format_summary, to_inference_data
from hbm.results.outputs import build_outputs, site_draws
from hbm.results.diagnostics import check_fit, sampler_check, report_lines

__all__ = ['Outputs', 'OutputVar', 'summarize', 'format_summary', 'to_inference_data', 'build_outputs', 'site_draws', 'check_fit', 'sampler_check', 'report_lines']
