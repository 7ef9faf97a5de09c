"""The benchmark harness of dreamreel (``dreamreel bench``), installed as ``dreamreel.benchmarks``.

It sits on top of the library and calls its functions; the library never imports it.
"""
