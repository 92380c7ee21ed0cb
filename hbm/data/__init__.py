"""The data, from the table to the devices: column kinds and transforms (``table``), per-row arrays
(``encode``, ``encode_nonlinear``), their arrangement for the likelihood (``layout``), device placement
(``devices``) and minibatches (``batching``)."""
from hbm.data.table import TableInfo, read_table, as_dataframe
from hbm.data.encode import Encoding, encode, encode_consts
from hbm.data.layout import Layout, plan_layout, build_rows

__all__ = ['TableInfo', 'read_table', 'as_dataframe', 'Encoding', 'encode', 'encode_consts', 'Layout', 'plan_layout', 'build_rows']
