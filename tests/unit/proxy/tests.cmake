# Unit tests of src/proxy/: ag_unit_test(name source.c ...)
