"""Accelerated EM that plugs into any EM loop: SQUAREM, DAAREM and Newton's method on
the EM map as ask/tell drivers (:mod:`.squarem`, :mod:`.daarem`, :mod:`.newton`,
:mod:`.driver`), the parameter maps it extrapolates in
(:mod:`.parameter_maps`, :mod:`.coordinates`), and a runner around one ``evaluate``
callable per pass (:mod:`.running`)."""

from dask_em.acceleration.coordinates import InfeasiblePoint
from dask_em.acceleration.daarem import Daarem
from dask_em.acceleration.driver import AcceptedPoint, EMState, PlainEM
from dask_em.acceleration.newton import EMNewton
from dask_em.acceleration.parameter_maps import ParameterMap, parameter_map
from dask_em.acceleration.running import (
    ACCELERATE_METHODS,
    check_accelerate,
    family_evaluate,
    make_driver,
    run_em,
)
from dask_em.acceleration.squarem import Squarem

__all__ = [
    "ACCELERATE_METHODS",
    "AcceptedPoint",
    "Daarem",
    "EMNewton",
    "EMState",
    "InfeasiblePoint",
    "ParameterMap",
    "PlainEM",
    "Squarem",
    "check_accelerate",
    "family_evaluate",
    "make_driver",
    "parameter_map",
    "run_em",
]
