"""After the engine: site draws to named parameters (``outputs``, linear and non-linear), summaries and
InferenceData (``summary``), the verdicts (``diagnostics``), fitted curves (``curves``), trace plots
(``plots``), the per-row log_likelihood and posterior_predictive groups (``pointwise``) and the predictive
check's picture (``ppc``). The names load on first use (PEP 562): reading a run (``hbm show``) needs
``summary`` alone, without JAX."""
from importlib import import_module

_WHERE = {"Outputs": "summary", "OutputVar": "summary", "summarize": "summary", "format_summary": "summary",
          "to_inference_data": "summary", "build_outputs": "outputs", "site_draws": "outputs",
          "check_fit": "diagnostics", "sampler_check": "diagnostics", "report_lines": "diagnostics",
          "plot_trace": "plots"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'hbm.results' has no attribute {name!r}")
    value = getattr(import_module(f"hbm.results.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
