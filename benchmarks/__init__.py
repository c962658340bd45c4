"""mmarray's asv suite (``cd benchmarks && asv run``): the cases of ``python -m mmarray bench``,
imported from the installed package (``mmarray.bench``), timed by asv across commits."""
