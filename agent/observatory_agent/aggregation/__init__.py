"""Pure windowing, quantiles and partial merging: no I/O, the clock is always an argument."""
