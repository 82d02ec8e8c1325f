# Unit tests of src/obs/: ag_unit_test(name source.c ...)
