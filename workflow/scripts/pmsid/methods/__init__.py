"""Every method the workflow trains and evaluates, one module each, listed in
:mod:`pmsid.methods.registry`: the floors (``mostpop``, ``random_ranking``),
the baselines (``sasrec``, ``tiger``), and the thesis's PMAT (``pmat``) and
MCRL (``mcrl``)."""
