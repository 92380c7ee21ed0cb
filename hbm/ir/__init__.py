"""The IR: plain frozen dataclasses that print readably and hold no arrays (``model``: a linear
formula's ``ModelIR``; ``nonlinear``: an expression over parameters that are each a ``ModelIR``)."""
from hbm.ir.model import Level, DesignColumn, Plate, PopulationTerm, GroupBlock, Chain, FamilyParam, Family, Response, ModelIR, Effect, plate_effects, population_columns
from hbm.ir.nonlinear import NonlinearIR, NonlinearParam, Limit

__all__ = ['Level', 'DesignColumn', 'Plate', 'PopulationTerm', 'GroupBlock', 'Chain', 'FamilyParam', 'Family', 'Response', 'ModelIR', 'Effect', 'plate_effects', 'population_columns', 'NonlinearIR', 'NonlinearParam', 'Limit']
