"""What every estimator is built from: the estimator base (:mod:`.base`), the parameter
table (:mod:`.params`), the fit driver (:mod:`.driver`), and helpers shared by several
models (:mod:`.gaussian`, :mod:`.symbols`)."""
