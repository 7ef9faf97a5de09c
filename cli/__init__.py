"""The `dreamreel` command line: parse, validate, call the library."""
