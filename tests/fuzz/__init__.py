"""Generated hostile-input corpus (see :mod:`tests.fuzz.make_corpus`)."""
