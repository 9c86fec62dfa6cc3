"""The rate-distortion core shared by pixel codecs and token compression."""

from tokencodec.rd.aggregate import aggregate
from tokencodec.rd.bd import (
    BDOverlapWarning,
    BDResult,
    bd_quality,
    bd_quality_arrays,
    bd_rate,
    bd_rate_arrays,
    bd_status,
)
from tokencodec.rd.bootstrap import Interval, bd_interval, point_intervals
from tokencodec.rd.comparable import (
    DataIdentity,
    DataMismatchError,
    DataMismatchWarning,
    check_comparable,
    data_identity,
)
from tokencodec.rd.curve import Curve, OperatingPoint
from tokencodec.rd.lagrangian import LambdaInterval, lagrangian_choice, lagrangian_cost, lambda_intervals
from tokencodec.rd.measures import KNOWN, Measure, lookup
from tokencodec.rd.pareto import pareto_front
from tokencodec.rd.results import ResultsFileError, curve_from_json, curve_to_json, load_curve, save_curve

__all__ = [
    "BDOverlapWarning", "BDResult", "bd_quality", "bd_quality_arrays", "bd_rate", "bd_rate_arrays", "bd_status",
    "Interval", "aggregate", "bd_interval", "point_intervals",
    "Curve", "OperatingPoint", "LambdaInterval", "lagrangian_choice", "lagrangian_cost", "lambda_intervals",
    "KNOWN", "Measure", "lookup", "pareto_front", "ResultsFileError", "curve_from_json", "curve_to_json",
    "load_curve", "save_curve", "DataIdentity", "DataMismatchError", "DataMismatchWarning", "check_comparable",
    "data_identity",
]
